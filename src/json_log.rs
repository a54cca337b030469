//! The JSON log line format: the same lines as tracing-subscriber's JSON formatter with
//! `flatten_event(true)` (`timestamp`, `level`, the event's fields, `target`), written for less.
//!
//! tracing-subscriber's formatter serializes through serde (tracing-serde's visitor, serde_json)
//! and an adaptor that turns every fragment serde_json writes into a `&str` (a UTF-8 check
//! each) and then into `fmt::Write`, and formats the timestamp with `write!` on every event.
//! The access log paid 32k instructions a request for that (issue 14). Here the visitor writes
//! the JSON itself into a `String`. Keys and text are looked at eight bytes at a time and
//! copied whole when nothing needs escaping (serde_json looks at every byte through a table:
//! half of what a line cost); the rare text that does is escaped by serde_json. Numbers go
//! through the same itoa and zmij serde_json uses. The date and time of day are formatted
//! once a second; the line then goes to the writer in one piece. An event inside a span (only
//! dependencies open spans, at debug level) is written by tracing-subscriber's own formatter,
//! with its `span` and `spans`.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent as _;
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
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The last second formatted: its Unix time and `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    /// The keys of the callsites this thread wrote last, most recently made first.
    static KEYS: RefCell<Vec<Rc<Keys>>> = const { RefCell::new(Vec::new()) };
}

/// Callsites whose keys a thread keeps ([`KEYS`]).
const KEPT_CALLSITES: usize = 16;

/// One callsite's keys as they are written, escaped once: `,"name":"` for each field, in the
/// order of its field set (issue 14: an access line's 21 keys were looked at for escapes on
/// every line). A callsite is `'static`, so one kept here never names another.
struct Keys {
    callsite: Identifier,
    keys: Box<[Box<str>]>,
}

impl Keys {
    /// The keys of `meta`'s callsite, made once per thread (`None`: this thread's keys are in
    /// use, by a line logged while another is written, which then escapes its own).
    fn of(meta: &Metadata<'_>) -> Option<Rc<Keys>> {
        let (callsite, fields) = (meta.callsite(), meta.fields());
        KEYS.try_with(|kept| {
            let mut kept = kept.try_borrow_mut().ok()?;
            if let Some(keys) = kept.iter().find(|k| k.callsite == callsite) {
                return Some(keys.clone());
            }
            let keys = fields
                .iter()
                .map(|field| {
                    let mut key = String::from(",\"");
                    push_escaped(&mut key, field.name());
                    key.push_str("\":\"");
                    key.into_boxed_str()
                })
                .collect();
            let made = Rc::new(Keys { callsite, keys });
            kept.truncate(KEPT_CALLSITES - 1);
            kept.insert(0, made.clone());
            Some(made)
        })
        .ok()
        .flatten()
    }

    /// `field`'s key with the quote that opens a text value (`None`: not one of these fields).
    fn text_key(&self, field: &Field) -> Option<&str> {
        if field.callsite() != self.callsite {
            return None;
        }
        self.keys.get(field.index()).map(|k| &**k)
    }
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
            let mut own = String::new();
            let mut borrowed = line.try_borrow_mut();
            let buf = match borrowed.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut own,
            };
            buf.clear();
            let written = write_line(buf, now, event).and_then(|()| writer.write_str(buf));
            // One very long line (a long path in an access line) is not kept as this thread's
            // buffer for good.
            if buf.capacity() > MAX_KEPT_LINE {
                *buf = String::new();
            }
            written
        })
    }
}

/// One event as a JSON line, its newline included. Fails only when a field's `Debug` or
/// `Display` fails (serde_json would panic there): the line is then not written.
fn write_line(buf: &mut String, now: SystemTime, event: &Event<'_>) -> fmt::Result {
    // Events from the `log` crate carry their own level and target.
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    let mut timestamp = [0u8; TIMESTAMP_LEN];
    buf.push_str("{\"timestamp\":\"");
    buf.push_str(format_timestamp(now, &mut timestamp));
    buf.push_str("\",\"level\":\"");
    buf.push_str(meta.level().as_str());
    buf.push('"');
    let mut fields = Fields { line: buf, keys: Keys::of(event.metadata()), result: Ok(()) };
    event.record(&mut fields);
    fields.result?;
    buf.push_str(",\"target\":\"");
    push_escaped(buf, meta.target());
    buf.push_str("\"}\n");
    Ok(())
}

/// The event's fields as `,"name":value` entries, in the order they are recorded: what
/// tracing-serde's `SerdeMapVisitor` serializes, with serde_json's escapes and numbers. What
/// `Visit` does not name here it formats as `Debug` (i128/u128) or `Display` (errors), as
/// tracing-serde's visitor does.
struct Fields<'a> {
    line: &'a mut String,
    /// The event's keys, escaped already (`None`: each is escaped as it is written).
    keys: Option<Rc<Keys>>,
    result: fmt::Result,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        // The text key's opening quote taken back: one kept form per key.
        self.text_key(field);
        self.line.pop();
    }

    /// A key and the quote that opens its text value.
    fn text_key(&mut self, field: &Field) {
        match self.keys.as_deref().and_then(|k| k.text_key(field)) {
            Some(key) => self.line.push_str(key),
            None => {
                self.line.push_str(",\"");
                push_escaped(self.line, field.name());
                self.line.push_str("\":\"");
            }
        }
    }
}

impl Visit for Fields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // serde_json writes NaN and the infinities as null.
        if value.is_finite() {
            self.line.push_str(zmij::Buffer::new().format_finite(value));
        } else {
            self.line.push_str("null");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.text_key(field);
        push_escaped(self.line, value);
        self.line.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text_key(field);
        let formatted = write!(Escaping(self.line), "{value:?}");
        self.line.push('"');
        if formatted.is_err() {
            self.result = formatted;
        }
    }
}

/// `fmt::Write` into a JSON string's contents, escaping as it goes.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

/// Appends `s` as the contents of a JSON string, escaped as serde_json escapes it.
fn push_escaped(out: &mut String, s: &str) {
    // Nearly every key and value needs no escape: looked at eight bytes at a time, copied whole.
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
        return;
    }
    // The rest (a quote, a backslash, a control character) is rare: serde_json escapes it.
    // Serializing a `str` into a String cannot fail; the quotes around it are left off.
    let quoted = serde_json::to_string(s).unwrap_or_default();
    out.push_str(quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default());
}

/// Whether any byte of `bytes` needs an escape, eight at a time. What is left over is read in
/// one piece, overlapping bytes already read, so no text takes a loop of single bytes: the
/// last eight bytes; for 4 to 7 bytes, the first four and the last four; for 1 to 3, the
/// first, middle and last byte, padded with bytes that need no escape.
fn needs_escape(bytes: &[u8]) -> bool {
    let n = bytes.len();
    if n >= 8 {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            if word_at(word, 0).map_or(true, any_escaped) {
                return true;
            }
        }
        return !words.remainder().is_empty() && word_at(bytes, n - 8).map_or(true, any_escaped);
    }
    let word = if n >= 4 {
        match (bytes.get(..4), bytes.get(n - 4..)) {
            (Some(&[a, b, c, d]), Some(&[e, f, g, h])) => [a, b, c, d, e, f, g, h],
            // Unreachable (both are four bytes): the escaping path is always right.
            _ => return true,
        }
    } else {
        match (bytes.first(), bytes.get(n / 2), bytes.last()) {
            (Some(&a), Some(&b), Some(&c)) => [a, b, c, b'a', b'a', b'a', b'a', b'a'],
            _ => return false, // empty
        }
    };
    any_escaped(u64::from_le_bytes(word))
}

/// The eight bytes of `bytes` from `at`, as a little-endian word.
fn word_at(bytes: &[u8], at: usize) -> Option<u64> {
    let word: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(word))
}

/// Whether any of the eight bytes of `word` needs an escape: one below 0x20, a `"` or a `\\`.
/// The word tricks of "Bit Twiddling Hacks" (`hasless`, `haszero`): as a yes/no they are exact.
fn any_escaped(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | quote | backslash) & HIGH != 0
}

/// The longest line buffer a thread keeps between events (bytes of capacity).
const MAX_KEPT_LINE: usize = 64 * 1024;

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const TIMESTAMP_LEN: usize = 27;

/// `now` as tracing-subscriber writes it (RFC 3339, UTC, microseconds). The date and time of
/// day are formatted once a second (humantime), the microseconds each time.
fn format_timestamp(now: SystemTime, out: &mut [u8; TIMESTAMP_LEN]) -> &str {
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

    /// Keys are escaped once per callsite and thread: a key that needs an escape, and more
    /// callsites than a thread keeps, taken in turn, each line with its own keys.
    #[test]
    fn each_callsite_writes_its_own_keys() {
        macro_rules! callsites {
            ($($key:ident)*) => {
                || { $( tracing::info!($key = 1, "a\"b\\c" = stringify!($key), "{}", stringify!($key)); )* }
            };
        }
        let run = callsites!(k0 k1 k2 k3 k4 k5 k6 k7 k8 k9 k10 k11 k12 k13 k14 k15 k16 k17 k18 k19);
        let twice = || {
            run();
            run();
        };
        let ours = lines(JsonLines::default(), twice);
        assert_eq!(ours.len(), 40);
        assert!(KEYS.with(|k| k.borrow().len()) <= KEPT_CALLSITES);
        let line = &parsed(&ours)[25];
        assert_eq!((line["k5"].as_u64(), line["a\"b\\c"].as_str()), (Some(1), Some("k5")), "{line}");
        assert_eq!(untimed(ours), untimed(theirs(twice)));
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

    /// Text heavy in what JSON escapes, around the eight-byte steps.
    fn escapable() -> impl Strategy<Value = String> {
        let chars = prop_oneof![
            Just('"'),
            Just('\\'),
            (0u8..0x20).prop_map(char::from),
            Just('\u{7f}'),
            Just('a'),
            Just('é'),
            Just('🦀'),
            any::<char>(),
        ];
        proptest::collection::vec(chars, 0..40).prop_map(|c| c.into_iter().collect())
    }

    #[test]
    fn every_byte_is_escaped_as_serde_json_does() {
        for b in 0u8..0x80 {
            let c = char::from(b);
            // At each place of texts of every length up to three words: alone, in the short
            // reads of 1 to 7 bytes, in whole words and in the overlapping last word.
            let texts = (1..=24).flat_map(|len| (0..len).map(move |at| (len, at)));
            let texts = texts.map(|(len, at)| format!("{}{c}{}", "x".repeat(at), "y".repeat(len - 1 - at)));
            for s in texts {
                let mut ours = String::from("\"");
                push_escaped(&mut ours, &s);
                ours.push('"');
                assert_eq!(ours, serde_json::to_string(&s).unwrap(), "byte {b:#x}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_text_is_escaped_as_serde_json_does(text in escapable()) {
            let mut ours = String::from("\"");
            push_escaped(&mut ours, &text);
            ours.push('"');
            prop_assert_eq!(ours, serde_json::to_string(&text).unwrap());
        }

        /// The word test says yes exactly when one of its bytes needs an escape.
        #[test]
        fn the_word_test_is_exact(bytes in any::<[u8; 8]>()) {
            // The bytes serde_json escapes: the C0 controls, `"` and `\\`.
            let any = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(any_escaped(u64::from_le_bytes(bytes)), any);
        }

        /// Escape-heavy text in every kind of field: the same line as tracing-subscriber's.
        #[test]
        fn escapable_fields_give_the_same_line(text in escapable(), n in any::<u64>(), f in any::<f64>()) {
            let ours = untimed(lines(JsonLines::default(), || events(&text, n, f)));
            prop_assert_eq!(ours, untimed(theirs(|| events(&text, n, f))));
        }

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
