//! The guest's serial console (`console.log` in the state directory), as
//! a boot or restore failure quotes it.

use std::path::Path;

/// The guest's console for a boot failure's message: its last lines, or,
/// when the guest's kernel oopsed, the first oops (where it faulted and its
/// call trace: later oopses are usually its consequences) and the last line.
pub(super) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    excerpt(&text)
}

/// Lines that begin a kernel's report of its own failure.
const OOPS_STARTS: [&str; 5] = [
    "BUG: ",
    "Oops:",
    "general protection fault",
    "WARNING: CPU:",
    "Kernel panic",
];

/// At most this many lines of an oops (a call trace is 30 to 60).
const OOPS_LINES: usize = 70;

fn excerpt(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let oops = lines
        .iter()
        .position(|l| OOPS_STARTS.iter().any(|m| l.contains(m)));
    match oops {
        Some(at) if lines.len() - at > OOPS_LINES => {
            let first = &lines[at..at + OOPS_LINES];
            format!("{} | … | {}", first.join(" | "), lines[lines.len() - 1])
        }
        Some(at) => lines[at..].join(" | "),
        None => lines[lines.len().saturating_sub(5)..].join(" | "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_failure_quotes_the_last_five_lines() {
        let text: String = (1..=9).map(|i| format!("line {i}\n\n")).collect();
        assert_eq!(excerpt(&text), "line 5 | line 6 | line 7 | line 8 | line 9");
    }

    #[test]
    fn an_oops_is_quoted_from_its_first_line() {
        let mut text: String = (1..=20).map(|i| format!("boot {i}\n")).collect();
        text.push_str("BUG: unable to handle page fault for address: ffffffff81c13600\n");
        text.push_str("RIP: 0010:virtqueue_get_buf_ctx+0x1a/0x2c0\n");
        text.push_str("Call Trace:\n <IRQ>\n");
        text.push_str("Kernel panic - not syncing: Fatal exception in interrupt\n");
        let got = excerpt(&text);
        assert!(got.starts_with("BUG: unable to handle page fault"), "{got}");
        assert!(got.contains("RIP: 0010:virtqueue_get_buf_ctx"), "{got}");
        assert!(got.ends_with("Fatal exception in interrupt"), "{got}");
    }

    #[test]
    fn a_long_oops_keeps_its_first_lines_and_the_last() {
        let mut text = String::from("general protection fault: 0000 [#1]\n");
        for i in 0..200 {
            text.push_str(&format!("frame {i}\n"));
        }
        let got = excerpt(&text);
        assert!(got.starts_with("general protection fault"), "{got}");
        assert!(
            got.contains(&format!("frame {} | … | frame 199", OOPS_LINES - 2)),
            "{got}"
        );
        assert_eq!(got.split(" | ").count(), OOPS_LINES + 2);
    }

    #[test]
    fn no_console_quotes_nothing() {
        assert_eq!(tail(Path::new("/nonexistent/console.log")), "");
    }
}
