//! Prefix templates (`user:{user_id}`): parsing, and binding parameters with escaping.

use crate::error::{Error, Result};

/// The separator between a namespace's prefix and what follows it (a key or a child namespace).
pub(crate) const SEPARATOR: char = ':';

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Text(String),
    Param(String),
}

/// Parses a template: text with `{name}` parameters (`name`: ASCII letters, digits and `_`, not
/// starting with a digit).
pub(crate) fn parse(template: &str) -> Result<Vec<Segment>> {
    let bad = |why: &str| Error::Namespace(format!("template {template:?}: {why}"));
    if template.is_empty() {
        return Err(bad("empty"));
    }
    let mut segments = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                segments.push(Segment::Text(rest.to_owned()));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b'}' => return Err(bad("'}' without '{'")),
            Some(i) => {
                if i > 0 {
                    segments.push(Segment::Text(rest[..i].to_owned()));
                }
                let after = &rest[i + 1..];
                let end = after.find('}').ok_or_else(|| bad("'{' without '}'"))?;
                let name = &after[..end];
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(bad(&format!("bad parameter name {name:?}")));
                }
                if segments
                    .iter()
                    .any(|s| matches!(s, Segment::Param(p) if p == name))
                {
                    return Err(bad(&format!("parameter {name:?} appears twice")));
                }
                segments.push(Segment::Param(name.to_owned()));
                rest = &after[end + 1..];
                // A parameter ends its part of the prefix: two bindings must never give the
                // same prefix, and the separator is the one character a value cannot hold (it
                // is escaped). With `t:{a}{b}` or `t:{a}-{b}`, `a=1,b=23` and `a=12,b=3` would.
                if !(rest.is_empty() || rest.starts_with(SEPARATOR)) {
                    return Err(bad(&format!(
                        "parameter {name:?} must be followed by {SEPARATOR:?} or end the template"
                    )));
                }
            }
        }
    }
    Ok(segments)
}

/// Escapes a parameter value so that it is plain text in a key: the separator, `%`, glob
/// characters (`*?[]\`), braces (Redis hash tags) and ASCII control and space characters are
/// percent-encoded. `user:{id}` bound to `1:x` is `user:1%3Ax`, never a nested namespace.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, ':' | '%' | '*' | '?' | '[' | ']' | '\\' | '{' | '}')
            || c.is_ascii_control()
            || c == ' '
        {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Fills `segments` from `params` (each parameter exactly once; no unknown ones).
pub(crate) fn bind(
    template: &str,
    segments: &[Segment],
    params: &[(&str, &str)],
) -> Result<String> {
    for (i, (name, _)) in params.iter().enumerate() {
        if !segments
            .iter()
            .any(|s| matches!(s, Segment::Param(p) if p == name))
        {
            return Err(Error::Namespace(format!(
                "unknown parameter {name:?} for template {template:?}"
            )));
        }
        if params[..i].iter().any(|(n, _)| n == name) {
            return Err(Error::Namespace(format!(
                "parameter {name:?} given twice for template {template:?}"
            )));
        }
    }
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Text(t) => out.push_str(t),
            Segment::Param(p) => {
                let value = params
                    .iter()
                    .find(|(n, _)| n == p)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| {
                        Error::Namespace(format!(
                            "missing parameter {p:?} for template {template:?}"
                        ))
                    })?;
                if value.is_empty() {
                    return Err(Error::Namespace(format!(
                        "empty value for parameter {p:?} of template {template:?}"
                    )));
                }
                out.push_str(&escape(value));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_and_parameters() {
        assert_eq!(
            parse("user:{user_id}:x").unwrap(),
            vec![
                Segment::Text("user:".into()),
                Segment::Param("user_id".into()),
                Segment::Text(":x".into())
            ]
        );
        for bad in ["", "a{", "a}", "{}", "{1x}", "{a b}", "{a}{a}"] {
            assert!(matches!(parse(bad), Err(Error::Namespace(_))), "{bad}");
        }
    }

    #[test]
    fn binds_with_escaping_and_names_bad_parameters() {
        let t = "user:{id}";
        let s = parse(t).unwrap();
        assert_eq!(bind(t, &s, &[("id", "1")]).unwrap(), "user:1");
        assert_eq!(bind(t, &s, &[("id", "*")]).unwrap(), "user:%2A");
        assert_eq!(bind(t, &s, &[("id", "1:x")]).unwrap(), "user:1%3Ax");
        assert_eq!(bind(t, &s, &[("id", "é")]).unwrap(), "user:é");
        let e = bind(t, &s, &[]).unwrap_err().to_string();
        assert!(e.contains("missing parameter \"id\""), "{e}");
        let e = bind(t, &s, &[("id", "1"), ("x", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown parameter \"x\""), "{e}");
        let e = bind(t, &s, &[("id", "1"), ("id", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        assert!(bind(t, &s, &[("id", "")]).is_err());
    }
}
