//! The terminal progress bar of long stages (tokenize, measure, downloads).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar (rate in `unit`/s, ETA) drawn on stderr when it is a terminal and `show` is
/// set; hidden otherwise, so logs of batch jobs stay clean.
pub fn progress_bar(len: u64, show: bool, what: &str, unit: &str) -> ProgressBar {
    use std::io::IsTerminal;
    let target = if show && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_message(what.to_string());
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{msg:>10}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit}  {{per_sec}}  ETA {{eta}}"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
