//! [`Shown`]: how text a client chose goes into a log line.
//!
//! Origins, close reasons, the reason a token was refused (which quotes the token's header),
//! room names: a client picks them, and a newline or an escape sequence in one would let it
//! write lines of its own into the text log (forged "refused" or "connected" lines, terminal
//! control). Every log line that carries such a value wraps it in `Shown`, which writes control
//! characters (and the Unicode ones that move or hide text) escaped, the way Rust's `{:?}`
//! does: `\n`, `\r`, `\t`, `\x1b`, `\u{202e}`. Everything else is written as it is.

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
        let mut rest = s;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            escape(self.0, c)?;
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// Control characters, and the format characters that reorder, hide or break lines.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

fn escape(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        c if u32::from(c) < 0x100 => write!(f, "\\x{:02x}", u32::from(c)),
        c => write!(f, "\\u{{{:x}}}", u32::from(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::Shown;

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
}
