//! [`Shown`]: how text a client chose goes into a log line.
//!
//! Origins, close reasons, the reason a token was refused (which quotes the token's header),
//! room names: a client picks them, and a newline or an escape sequence in one would let it
//! write lines of its own into the text log (forged "refused" or "connected" lines, terminal
//! control). Every log line that carries such a value wraps it in `Shown`, which writes control
//! characters (and the Unicode ones that move or hide text) escaped, the way Rust's `{:?}`
//! does: `\n`, `\r`, `\t`, `\x1b`, `\u{202e}`. Everything else is written as it is.
//!
//! The terminal client shows what the server sent through [`escaped`], the same rule with
//! two differences: a tab, which only moves the cursor right, is kept there, and so is a
//! zero-width joiner, which only joins (an emoji family is one picture with it).

use std::borrow::Cow;
use std::fmt::{self, Display, Write};

/// A value written with its control characters escaped; see the [module](self).
#[derive(Debug, Clone, Copy)]
pub struct Shown<T>(pub T);

impl<T: Display> Display for Shown<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{}", self.0)
    }
}

/// Writes what it is given to the formatter, escaped.
struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s, needs_escape)
    }
}

/// `text` made safe to print on a terminal: the [module](self)'s escaping, but a tab is kept.
/// Without it a message could retitle the window (`ESC ] 0 ; … BEL`), erase or rewrite lines
/// already shown (`ESC [ 2K`, `CR`), or forge a line from someone else (`\n[lobby] admin: …`).
pub fn escaped(text: &str) -> Cow<'_, str> {
    // A zero-width joiner only joins: an emoji family (👩‍👩‍👧) is one picture with it, and
    // three escapes without.
    fn hidden(c: char) -> bool {
        c != '\t' && c != '\u{200d}' && needs_escape(c)
    }
    if !text.contains(hidden) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    let _ = write_escaped(&mut shown, text, hidden);
    Cow::Owned(shown)
}

/// Writes `s` to `out` with every character for which `hidden` holds escaped.
fn write_escaped(out: &mut impl Write, s: &str, hidden: fn(char) -> bool) -> fmt::Result {
    let mut rest = s;
    while let Some(at) = rest.find(hidden) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        escape(out, c)?;
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// Control characters (C0, DEL, C1), and the format characters that reorder, hide or break
/// lines.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

fn escape(out: &mut impl Write, c: char) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c if u32::from(c) < 0x80 => write!(out, "\\x{:02x}", u32::from(c)),
        c => write!(out, "\\u{{{:x}}}", u32::from(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::{Shown, escaped};

    #[test]
    fn an_emoji_family_stays_one_picture_in_the_terminal() {
        let family = "👩\u{200d}👩\u{200d}👧";
        assert_eq!(escaped(family), family);
        assert_eq!(escaped("a\u{200b}b\u{202e}c"), "a\\u{200b}b\\u{202e}c");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(Shown("plain ünïcode").to_string(), "plain ünïcode");
        assert_eq!(
            Shown("a\nb\r\tc\x1b[31md\x7f").to_string(),
            "a\\nb\\r\\tc\\x1b[31md\\x7f"
        );
        assert_eq!(
            Shown("x\u{202e}y\u{2028}").to_string(),
            "x\\u{202e}y\\u{2028}"
        );
        // Any Display, not only text: the escaping applies to what it writes.
        assert_eq!(
            Shown(format_args!("{}!", "hi\nthere")).to_string(),
            "hi\\nthere!"
        );
    }

    #[test]
    fn the_terminal_escaping_is_the_same_but_keeps_tabs() {
        assert_eq!(
            escaped("\x1b]0;pwned\x07\x1b[2Khi\r\nthere\x7f\u{9b}"),
            "\\x1b]0;pwned\\x07\\x1b[2Khi\\r\\nthere\\x7f\\u{9b}"
        );
        assert_eq!(escaped("a\u{202e}b\u{200b}"), "a\\u{202e}b\\u{200b}");
        let plain = "héllo 世界 🎉\ttab \\x1b";
        assert!(matches!(escaped(plain), std::borrow::Cow::Borrowed(p) if p == plain));
        assert_eq!(Shown("\t").to_string(), "\\t");
    }
}
