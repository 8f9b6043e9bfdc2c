//! Parsing of the settings users type: `KEY=VALUE` pairs (`--env`,
//! `--init-env`, the registry's `init_env` parameter) and durations
//! (`--request-timeout 250ms`). One definition, so the CLI, the runner and
//! the registry accept exactly the same text.

use std::time::Duration;

/// Parses `KEY=VALUE`. The key must not be empty; the value may be, and
/// may itself contain `=`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// Parses the text of an environment file: one `KEY=VALUE` per line, taken
/// literally (no quoting, no expansion); blank lines and lines starting
/// with `#` are skipped.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_end_matches('\r')))
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        // The line itself is never quoted back: it may hold a secret.
        .map(|(number, line)| {
            parse_key_value(line).map_err(|_| format!("line {number} is not KEY=VALUE"))
        })
        .collect()
}

/// Parses a duration: `500ms`, `30s`, `2m`, `1h 30m` (humantime's syntax),
/// or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 30s or 500ms: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_pairs() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(
            parse_key_value("A=b=c").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(parse_key_value("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("novalue").is_err());
        assert_eq!(
            parse_env_file("# secrets\nA=1\r\n\nB=x=y\n").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        let err = parse_env_file("A=1\nhunter2\n").unwrap_err();
        assert_eq!(err, "line 2 is not KEY=VALUE");
    }
}
