//! `agop measure --profile`: where a measurement's time goes, phase by phase (forward, probes,
//! backward, Grams, FACT, checkpoints). Each phase is timed with the device synchronized before
//! and after it, so on a GPU a phase's time is the kernels it issued, not the launches; nested
//! phases (the Grams inside the backward's visitor) count only in their own line. Off by default:
//! synchronizing costs a little on a GPU (the queue drains at every boundary), nothing on the CPU.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use candle_core::Device;

/// Accumulated self time per phase, in the order phases were first seen.
#[derive(Default)]
struct State {
    /// (name, seconds excluding nested phases, calls).
    totals: Vec<(&'static str, f64, u64)>,
    /// The open phases' nested time so far, innermost last.
    stack: Vec<f64>,
}

/// Phase timings of one measurement (a no-op unless made with `on`).
pub struct Profile {
    device: Device,
    on: bool,
    state: Mutex<State>,
}

impl Profile {
    pub fn new(device: &Device, on: bool) -> Self {
        Self { device: device.clone(), on, state: Mutex::default() }
    }

    /// Run `f` as phase `name`.
    pub fn time<T>(&self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.on {
            return f();
        }
        self.device.synchronize()?;
        self.lock().stack.push(0.0);
        let start = Instant::now();
        let out = f();
        self.device.synchronize()?;
        let elapsed = start.elapsed().as_secs_f64();
        let mut s = self.lock();
        let nested = s.stack.pop().expect("pushed above");
        if let Some(outer) = s.stack.last_mut() {
            *outer += elapsed;
        }
        match s.totals.iter_mut().find(|(n, ..)| *n == name) {
            Some(t) => {
                t.1 += elapsed - nested;
                t.2 += 1;
            }
            None => s.totals.push((name, elapsed - nested, 1)),
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (phase, seconds, calls) in the order first seen; empty when off.
    pub fn totals(&self) -> Vec<(&'static str, f64, u64)> {
        self.lock().totals.clone()
    }

    /// One line per phase with its share of `wall` seconds, and what no phase covered.
    pub fn report(&self, wall: f64) -> String {
        let totals = self.totals();
        let covered: f64 = totals.iter().map(|t| t.1).sum();
        let pct = |s: f64| 100.0 * s / wall.max(1e-12);
        let mut out =
            format!("profile ({}, device synchronized around each phase):\n", crate::model::device_name(&self.device));
        for (name, secs, calls) in totals {
            out += &format!("  {name:<16} {secs:9.3} s {:5.1}%  ({calls} calls)\n", pct(secs));
        }
        out += &format!("  {:<16} {:9.3} s {:5.1}%\n", "other", wall - covered, pct(wall - covered));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nested phases count only in their own line; an outer phase gets the rest.
    #[test]
    fn nested_phases_are_excluded_from_their_parent() {
        let p = Profile::new(&Device::Cpu, true);
        let sleep = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
        for _ in 0..2 {
            p.time("outer", || {
                sleep(30);
                p.time("inner", || {
                    sleep(50);
                    Ok(())
                })
            })
            .unwrap();
        }
        let t = p.totals();
        assert_eq!(t.iter().map(|x| (x.0, x.2)).collect::<Vec<_>>(), [("inner", 2), ("outer", 2)]);
        let (inner, outer) = (t[0].1, t[1].1);
        assert!((0.1..0.2).contains(&inner), "inner {inner}");
        assert!((0.06..0.1).contains(&outer), "outer {outer} should exclude the inner 0.1 s");
        assert!(Profile::new(&Device::Cpu, false).time("x", || Ok(1)).is_ok());
        assert!(Profile::new(&Device::Cpu, false).totals().is_empty());
    }
}
