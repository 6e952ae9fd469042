//! Reads the Prometheus text format of kubelet's `/metrics/resource`: the
//! samples of the few series metrics-server uses, with their timestamps.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct ParseError {
    line: usize,
    why: &'static str,
}

/// One sample: its series name and labels, value and timestamp (ms).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// The label set between braces; `rest` starts after the `{`. Returns the
/// labels and what follows the closing brace.
fn labels(mut rest: &str) -> Option<(HashMap<String, String>, &str)> {
    let mut out = HashMap::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((out, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.insert(name.trim().to_owned(), value);
        rest = &after[end + 1..];
    }
}

fn number(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |why| ParseError { line: i + 1, why };
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            labels(&line[name_end + 1..]).ok_or_else(|| err("unterminated labels"))?
        } else {
            (HashMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(number)
            .ok_or_else(|| err("bad value"))?;
        let timestamp_ms = match fields.next() {
            Some(t) => Some(t.parse().map_err(|_| err("bad timestamp"))?),
            None => None,
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
            timestamp_ms,
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_pages_are_read() {
        let page = "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time\n\
            # TYPE node_cpu_usage_seconds_total counter\n\
            node_cpu_usage_seconds_total 357.35 1700000000123\n\
            container_memory_working_set_bytes{container=\"a\",namespace=\"ns\",pod=\"p \\\"q\\\"\"} 1.048576e+06 1700000000456\n\
            resource_scrape_error 0\n";
        let s = parse(page).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].value, s[0].timestamp_ms),
            (357.35, Some(1700000000123))
        );
        assert_eq!(s[1].label("pod"), "p \"q\"");
        assert_eq!(s[1].label("container"), "a");
        assert_eq!(s[1].value, 1048576.0);
        assert_eq!(
            (s[2].name.as_str(), s[2].timestamp_ms),
            ("resource_scrape_error", None)
        );
        assert!(parse("x{a=\"b\" 1").is_err());
    }
}
