//! The JSON log line format: the same lines as tracing-subscriber's JSON formatter with
//! `flatten_event(true)` (`timestamp`, `level`, the event's fields, `target`), written for less.
//!
//! tracing-subscriber's formatter serializes through an adaptor that turns every fragment
//! serde_json writes into a `&str` (a UTF-8 check each) and then into `fmt::Write`, and formats
//! the timestamp with `write!` on every event. The access log paid 32k instructions a request
//! for that (issue 14). Here the line is serialized into a plain byte buffer with the same
//! serde visitor, and the date and time of day are formatted once a second; the line then goes
//! to the writer in one piece. An event inside a span (only dependencies open spans, at debug
//! level) is written by tracing-subscriber's own formatter, with its `span` and `spans`.

use std::cell::RefCell;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::{SerializeMap as _, Serializer as _};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_serde::AsSerde as _;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON event format (see the module's doc).
pub(crate) struct JsonLines {
    /// tracing-subscriber's own formatter, for events inside a span.
    in_span: Format<Json>,
}

impl Default for JsonLines {
    fn default() -> Self {
        JsonLines { in_span: Format::default().json().flatten_event(true) }
    }
}

thread_local! {
    /// The line being written, reused from event to event.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The last second formatted: its Unix time and `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if event.parent().and_then(|id| ctx.span(id)).or_else(|| ctx.lookup_current()).is_some() {
            return self.in_span.format_event(ctx, writer, event);
        }
        let now = SystemTime::now();
        LINE.with(|line| {
            // A line logged while formatting another (a Debug impl that logs) gets its own buffer.
            let mut own = Vec::new();
            let mut borrowed = line.try_borrow_mut();
            let buf = match borrowed.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut own,
            };
            buf.clear();
            write_line(buf, now, event).map_err(|_| fmt::Error)?;
            let written = writer.write_str(std::str::from_utf8(buf).map_err(|_| fmt::Error)?);
            // One very long line (a long path in an access line) is not kept as this thread's
            // buffer for good.
            if buf.capacity() > MAX_KEPT_LINE {
                *buf = Vec::new();
            }
            written
        })
    }
}

/// One event as a JSON line, its newline included.
fn write_line(buf: &mut Vec<u8>, now: SystemTime, event: &Event<'_>) -> Result<(), serde_json::Error> {
    // Events from the `log` crate carry their own level and target.
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    let mut timestamp = [0u8; TIMESTAMP_LEN];
    let timestamp = format_timestamp(now, &mut timestamp);
    let mut ser = serde_json::Serializer::new(&mut *buf);
    let mut map = ser.serialize_map(None)?;
    map.serialize_entry("timestamp", timestamp)?;
    map.serialize_entry("level", &meta.level().as_serde())?;
    let mut visitor = tracing_serde::SerdeMapVisitor::new(map);
    event.record(&mut visitor);
    let mut map = visitor.take_serializer()?;
    map.serialize_entry("target", meta.target())?;
    map.end()?;
    buf.push(b'\n');
    Ok(())
}

/// The longest line buffer a thread keeps between events (bytes of capacity).
const MAX_KEPT_LINE: usize = 64 * 1024;

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const TIMESTAMP_LEN: usize = 27;

/// `now` as tracing-subscriber writes it (RFC 3339, UTC, microseconds). The date and time of
/// day are formatted once a second (humantime), the microseconds each time.
fn format_timestamp(now: SystemTime, out: &mut [u8; TIMESTAMP_LEN]) -> &str {
    use std::fmt::Write as _;
    let since = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    // humantime (like RFC 3339) stops at the end of year 9999: a clock past it reads as that.
    let secs = since.as_secs().min(253_402_300_799);
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            let mut whole = String::with_capacity(20);
            let _ = write!(whole, "{}", humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)));
            whole.truncate(19); // `YYYY-MM-DDTHH:MM:SS`, without the `Z`
            *second = (secs, whole);
        }
        let prefix = second.1.as_bytes();
        let n = prefix.len().min(19);
        out[..n].copy_from_slice(&prefix[..n]);
        out[n] = b'.';
        let mut micros = since.subsec_micros();
        for d in out[n + 1..n + 7].iter_mut().rev() {
            *d = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        out[n + 7] = b'Z';
        std::str::from_utf8(&out[..n + 8]).unwrap_or("")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};

    /// The lines written while `f` runs, by the given event format.
    fn lines<E>(format: E, f: impl FnOnce()) -> Vec<String>
    where
        E: FormatEvent<tracing_subscriber::Registry, tracing_subscriber::fmt::format::JsonFields>
            + Send
            + Sync
            + 'static,
    {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::TRACE)
            .event_format(format)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines().map(str::to_string).collect()
    }

    fn parsed(lines: &[String]) -> Vec<serde_json::Value> {
        lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// An in-memory log writer for tests (shared by the request log's tests).
    #[derive(Clone, Default)]
    pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tracing-subscriber's JSON formatter writes for the same events.
    fn theirs(f: impl FnOnce()) -> Vec<String> {
        lines(Format::default().json().flatten_event(true), f)
    }

    /// The lines as written, byte for byte, but for their timestamps (which must be there,
    /// first, in the same form).
    fn untimed(lines: Vec<String>) -> Vec<String> {
        const HEAD: &str = "{\"timestamp\":\"";
        lines
            .into_iter()
            .map(|l| {
                assert!(l.starts_with(HEAD), "{l}");
                let rest = &l[HEAD.len()..];
                assert_eq!(rest.as_bytes()[TIMESTAMP_LEN], b'"', "{l}");
                assert!(humantime::parse_rfc3339(&rest[..TIMESTAMP_LEN]).is_ok(), "{l}");
                rest[TIMESTAMP_LEN..].to_string()
            })
            .collect()
    }

    fn events(text: &str, n: u64, f: f64) {
        let err = std::io::Error::other("disk \"full\"");
        tracing::info!(target: "palette_gateway::access", request_id = text, status = n, duration_ms = f, complete = true);
        tracing::warn!(path = text, reason = %text, debug = ?("a\"b", Some(3)), "refused {text}");
        tracing::error!(error = &err as &dyn std::error::Error, delta = -(n as i64), big = n as u128);
        tracing::debug!(r#type = "raw", "{}", text);
        tracing::trace!(nan = f64::NAN, inf = f64::INFINITY);
    }

    /// Byte for byte (but the timestamp), the lines are tracing-subscriber's.
    #[test]
    fn lines_match_tracing_subscribers_json() {
        let text = "a \"quoted\"\n\t\\ line \u{1b}[31m é 🦀";
        let ours = lines(JsonLines::default(), || events(text, 7, 0.125));
        assert_eq!(ours.len(), 5);
        assert_eq!(untimed(ours), untimed(theirs(|| events(text, 7, 0.125))));
    }

    /// Inside a span, the line carries the span as tracing-subscriber writes it.
    #[test]
    fn an_event_in_a_span_keeps_its_span() {
        let run = || {
            let span = tracing::info_span!("conn", peer = "127.0.0.1:1");
            let _in = span.enter();
            tracing::info!(x = 1, "in a span");
        };
        let ours = lines(JsonLines::default(), run);
        assert_eq!(parsed(&ours)[0]["span"]["peer"], "127.0.0.1:1", "{ours:?}");
        assert_eq!(untimed(ours), untimed(theirs(run)));
    }

    /// A line longer than the buffer a thread keeps is written whole, and the buffer given back.
    #[test]
    fn a_long_line_is_written_whole_and_not_kept() {
        let long = "x".repeat(3 * MAX_KEPT_LINE);
        let ours = lines(JsonLines::default(), || tracing::info!(path = long.as_str(), "long"));
        assert_eq!(parsed(&ours)[0]["path"].as_str(), Some(long.as_str()));
        assert!(LINE.with(|l| l.borrow().capacity()) <= MAX_KEPT_LINE);
        let short = lines(JsonLines::default(), || tracing::info!(n = 1, "short"));
        assert_eq!(parsed(&short)[0]["n"], 1);
    }

    /// A `log` crate record keeps its own level and target.
    #[test]
    fn log_records_keep_their_level_and_target() {
        let run = || {
            let record = log::Record::builder()
                .level(log::Level::Warn)
                .target("some_crate::pool")
                .args(format_args!("from log"))
                .build();
            tracing_log::format_trace(&record).unwrap();
        };
        let ours = lines(JsonLines::default(), run);
        let line = &parsed(&ours)[0];
        assert_eq!((line["level"].as_str(), line["target"].as_str()), (Some("WARN"), Some("some_crate::pool")));
        assert_eq!(untimed(ours), untimed(theirs(run)));
    }

    /// The timestamp reads as humantime (and tracing-subscriber) writes it, across second,
    /// day and year boundaries.
    #[test]
    fn timestamps_match_rfc_3339_with_microseconds() {
        let base = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31T23:59:59Z
        for micros in [0, 1, 999_999, 1_000_000, 1_000_001, 86_400_000_000, 3_000_123_456] {
            let t = base + Duration::from_micros(micros);
            let mut buf = [0u8; TIMESTAMP_LEN];
            assert_eq!(format_timestamp(t, &mut buf), humantime::format_rfc3339_micros(t).to_string());
        }
        let mut buf = [0u8; TIMESTAMP_LEN];
        assert_eq!(format_timestamp(UNIX_EPOCH, &mut buf), "1970-01-01T00:00:00.000000Z");
    }

    proptest! {
        /// Any text, any numbers: the same line as tracing-subscriber's.
        #[test]
        fn any_fields_give_the_same_line(text in any::<String>(), n in any::<u64>(), f in any::<f64>()) {
            let ours = untimed(lines(JsonLines::default(), || events(&text, n, f)));
            prop_assert_eq!(ours, untimed(theirs(|| events(&text, n, f))));
        }

        #[test]
        fn any_time_is_formatted_as_humantime_does(secs in 0u64..253_402_300_799, micros in 0u32..1_000_000) {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(u64::from(micros));
            let mut buf = [0u8; TIMESTAMP_LEN];
            prop_assert_eq!(format_timestamp(t, &mut buf), humantime::format_rfc3339_micros(t).to_string());
        }
    }
}
