//! What a measurement is: the output function, the estimator, probes and seed.

/// The output function f whose gradients are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Output {
    /// Every logit at every position (the published choice).
    Logits,
    /// Per-position next-token cross-entropy.
    Loss,
}

/// How the sum over outputs is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    /// Exactly, T·C (logits) or T−1 (loss) backward passes per window. For small models.
    Exact,
    /// k random probes per window, unbiased.
    Sketch,
}

impl Output {
    pub fn as_str(self) -> &'static str {
        match self {
            Output::Logits => "logits",
            Output::Loss => "loss",
        }
    }
}

impl Estimator {
    pub fn as_str(self) -> &'static str {
        match self {
            Estimator::Exact => "exact",
            Estimator::Sketch => "sketch",
        }
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Estimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Measurement settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub output: Output,
    pub estimator: Estimator,
    pub probes: u32,
    pub seed: u64,
    /// Also sum the FACT weight gradients of the loss ([`super::fact`]): one more backward per window.
    pub fact: bool,
}

impl Settings {
    /// The `probes` recorded in GOP files: the probe count for the sketch, 0 for exact.
    pub fn recorded_probes(&self) -> u32 {
        match self.estimator {
            Estimator::Exact => 0,
            Estimator::Sketch => self.probes,
        }
    }
}
