//! The one place runc-style log lines come from: `--log FILE` (or stderr) in
//! `--log-format text|json`, error level only unless `--debug`.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

struct Line {
    sink: Mutex<Box<dyn Write + Send>>,
    json: bool,
    max: Level,
}

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// The subscriber itself: rt records no spans, so there is no span
/// registry (tracing-subscriber's allocates its slab on every start, some
/// thirty kilobytes of fresh heap), and the level filter is the subscriber's
/// own hint, so that a disabled `debug!` costs a comparison rather than its
/// callsite's registration.
impl Subscriber for Line {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max))
    }

    // Spans are accepted and forgotten: one id for all, nothing recorded.
    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    // Only events `enabled` let through arrive here.
    fn event(&self, event: &Event<'_>) {
        let level = *event.metadata().level();
        let mut msg = Message::default();
        event.record(&mut msg);
        let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let lvl = level.as_str().to_ascii_lowercase();
        let line = if self.json {
            let v = serde_json::json!({"level": lvl, "msg": msg.0, "time": time});
            format!("{v}\n")
        } else {
            format!("time={time:?} level={lvl} msg={:?}\n", msg.0)
        };
        if let Ok(mut sink) = self.sink.lock() {
            let _ = sink.write_all(line.as_bytes());
            let _ = sink.flush();
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Installs the logger. Returns whether log lines go to a file (errors are
/// then also printed to stderr by main).
pub fn init(log: Option<&Path>, json: bool, debug: bool) -> anyhow::Result<bool> {
    let (sink, to_file): (Box<dyn Write + Send>, bool) = match log {
        Some(path) if !path.as_os_str().is_empty() => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("opening log file {}: {e}", path.display()))?;
            // The file lives as long as the process, and the children rt
            // forks (stage, init, exec'd process) keep its descriptor until
            // they exec: their log lines land here, and no later open can
            // take its number while the logger still writes to it.
            let f: &'static std::fs::File = Box::leak(Box::new(f));
            rt_sys::keep_in_children(f.as_fd());
            (Box::new(f), true)
        }
        _ => (Box::new(std::io::stderr()), false),
    };
    let max = if debug {
        Level::DEBUG
    } else if to_file {
        Level::ERROR
    } else {
        Level::WARN
    };
    let subscriber = Line {
        sink: Mutex::new(sink),
        json,
        max,
    };
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(to_file)
}
