//! Text from outside as messages show it: a name from a forged snapshot, a key from a
//! hostile listing, a server's error body. Control characters and bytes that are not
//! UTF-8 are escaped, so that such text can neither drive the terminal nor forge log
//! lines; server text is also cut short.

/// A path as a terminal may show it: control characters, backslashes and bytes that are
/// not UTF-8 escaped (`\x1b`), so that a forged name cannot drive the terminal.
pub fn printable(path: &[u8]) -> String {
    let mut out = String::new();
    printable_into(&mut out, path);
    out
}

/// [`printable`], appended to `out` (a progress line's, reused for every file).
pub fn printable_into(out: &mut String, path: &[u8]) {
    for chunk in path.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
}

/// A server's text (an error body) as messages show it: control characters escaped, at
/// most `max` characters, so that a hostile answer can neither drive the terminal nor
/// flood the log.
pub fn quote(text: &[u8], max: usize) -> String {
    let lossy = String::from_utf8_lossy(text);
    let mut out = String::new();
    for (n, c) in lossy.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        match c {
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_cannot_drive_a_terminal() {
        assert_eq!(printable(b"a/b c.txt"), "a/b c.txt");
        assert_eq!(printable(b"x\x1b[2Jy"), "x\\u{1b}[2Jy");
        assert_eq!(printable(b"nl\nz\\"), "nl\\nz\\\\");
        assert_eq!(printable(b"\xff\xfeok"), "\\xff\\xfeok");
    }

    #[test]
    fn server_text_is_escaped_and_cut() {
        assert_eq!(quote(b"a\x1b[31mb\n", 100), "a\\u{1b}[31mb\\n");
        assert_eq!(quote(&[b'x'; 10], 4), "xxxx…");
        assert_eq!(quote(b"\xff", 5), "\u{fffd}");
    }
}
