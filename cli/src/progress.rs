//! Terminal progress for builds: one spinner per step, with timings.
//! Hidden when stderr is not a terminal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use thaw_builder::BuildEvent;

pub struct BuildProgress {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl BuildProgress {
    pub fn new() -> Self {
        Self {
            multi: MultiProgress::new(),
            bars: Mutex::default(),
        }
    }

    /// Starts a step that is not part of the registry pipeline (`go build`).
    pub fn start(&self, name: &str) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                .expect("valid template"),
        );
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        self.bars.lock().unwrap().insert(name.to_string(), bar);
    }

    pub fn finish(&self, name: &str, elapsed: Duration) {
        if let Some(bar) = self.bars.lock().unwrap().remove(name) {
            bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
            bar.finish_with_message(format!("✓ {name} ({})", format_duration(elapsed)));
        }
    }

    /// Ends every running step as failed.
    pub fn abandon(&self) {
        for (name, bar) in self.bars.lock().unwrap().drain() {
            bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
            bar.abandon_with_message(format!("✗ {name}"));
        }
    }

    pub fn on_event(&self, event: BuildEvent) {
        match event {
            BuildEvent::Started(step) => self.start(&step.to_string()),
            BuildEvent::Finished(step, elapsed) => self.finish(&step.to_string(), elapsed),
            BuildEvent::CacheHit(digest) => {
                let _ = self
                    .multi
                    .println(format!("✓ build cache hit: {}", digest.short()));
            }
        }
    }
}

pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}
