//! The seeds' SayThx (003 ch9), in Rust: one binary, three tiers.
//!
//! - `saythx backend` (:8080): `POST /api/v1/submit` with a name queues a
//!   thank-you in Redis; `GET /api/v1/list` returns the ranking as
//!   `{"HonorDatas":[{"Name":..,"Score":..}]}` (`null` when empty).
//! - `saythx work`: takes queued thank-yous off Redis and counts them into
//!   the ranking.
//! - `saythx frontend` (:80): a page, and `/api/` proxied to the backend
//!   (`BACKEND_HOST`:`BACKEND_PORT`, default `saythx-backend:8080`),
//!   resolved by name on every request as nginx's upstream does.
//!
//! Redis is `REDIS_HOST`:`REDIS_PORT` (default `saythx-redis:6379`).

use std::time::Duration;

use kubox_example_apps::env_or;
use kubox_example_apps::http::{self, Response};
use kubox_example_apps::redis::{Client, Reply};

const QUEUE: &str = "saythx:queue";
const RANKING: &str = "saythx:honors";

const PAGE: &str = "<!doctype html>\n<title>Say Thanks</title>\n<h1>Say Thanks</h1>\n<form method=post action=/api/v1/submit><input name=name><button>Thanks!</button></form>\n";

fn redis() -> std::io::Result<Client> {
    Client::connect(
        &env_or("REDIS_HOST", "saythx-redis"),
        &env_or("REDIS_PORT", "6379"),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The name in a submit body: `name=x` (a form) or `{"name":"x"}` (JSON).
fn submitted_name(body: &[u8]) -> Option<String> {
    let body = String::from_utf8_lossy(body);
    let body = body.trim();
    let name = if body.starts_with('{') {
        let after = body.split("\"name\"").nth(1)?;
        let value = after
            .trim_start()
            .strip_prefix(':')?
            .trim_start()
            .strip_prefix('"')?;
        value.split('"').next()?.to_owned()
    } else {
        body.split('&')
            .find_map(|kv| kv.strip_prefix("name="))?
            .replace('+', " ")
    };
    (!name.is_empty()).then_some(name)
}

fn ranking() -> std::io::Result<String> {
    let reply = redis()?.command(&["ZREVRANGE", RANKING, "0", "-1", "WITHSCORES"])?;
    let items = match reply {
        Reply::Array(Some(items)) if !items.is_empty() => items,
        _ => return Ok(r#"{"HonorDatas":null}"#.to_owned()),
    };
    let entries: Vec<String> = items
        .chunks(2)
        .filter_map(|pair| {
            let name = pair.first()?.text()?;
            let score = pair.get(1)?.text()?;
            Some(format!(
                r#"{{"Name":{},"Score":{score}}}"#,
                json_string(&name)
            ))
        })
        .collect();
    Ok(format!(r#"{{"HonorDatas":[{}]}}"#, entries.join(",")))
}

fn backend() -> std::io::Result<()> {
    http::serve(
        &format!("0.0.0.0:{}", env_or("PORT", "8080")),
        |req| match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/api/v1/list") => match ranking() {
                Ok(body) => Response::json(body),
                Err(e) => Response::text(500, format!("redis: {e}\n")),
            },
            ("POST", "/api/v1/submit") => match submitted_name(&req.body) {
                None => Response::text(400, "a name is required\n"),
                Some(name) => match redis().and_then(|mut r| r.command(&["LPUSH", QUEUE, &name])) {
                    Ok(_) => Response::json(r#"{"ok":true}"#),
                    Err(e) => Response::text(500, format!("redis: {e}\n")),
                },
            },
            ("GET", "/healthz") => Response::text(200, "ok"),
            _ => Response::text(404, "404 page not found\n"),
        },
    )
}

fn work() {
    loop {
        let mut client = match redis() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("connecting to redis: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        eprintln!("working on {QUEUE}");
        loop {
            match client.command(&["BRPOP", QUEUE, "0"]) {
                Ok(Reply::Array(Some(popped))) => {
                    if let Some(name) = popped.get(1).and_then(Reply::text)
                        && let Err(e) = client.command(&["ZINCRBY", RANKING, "1", &name])
                    {
                        eprintln!("counting {name}: {e}");
                        break;
                    }
                }
                Ok(other) => eprintln!("unexpected reply {other:?}"),
                Err(e) => {
                    eprintln!("waiting for work: {e}");
                    break;
                }
            }
        }
    }
}

fn frontend() -> std::io::Result<()> {
    let backend = format!(
        "{}:{}",
        env_or("BACKEND_HOST", "saythx-backend"),
        env_or("BACKEND_PORT", "8080")
    );
    http::serve(&format!("0.0.0.0:{}", env_or("PORT", "80")), move |req| {
        if req.path.starts_with("/api/") {
            let target = if req.query.is_empty() {
                req.path.clone()
            } else {
                format!("{}?{}", req.path, req.query)
            };
            return match http::request(backend.as_str(), &req.method, &target, &req.body) {
                Ok((status, body)) => Response {
                    status,
                    content_type: "application/json",
                    body,
                },
                Err(e) => Response::text(502, format!("backend {backend}: {e}\n")),
            };
        }
        Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: PAGE.as_bytes().to_vec(),
        }
    })
}

fn main() {
    kubox_example_apps::exit_on_sigterm();
    let result = match std::env::args().nth(1).as_deref() {
        Some("backend") => backend(),
        Some("frontend") => frontend(),
        Some("work") => {
            work();
            Ok(())
        }
        _ => {
            eprintln!("usage: saythx backend|frontend|work");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_forms_and_json() {
        assert_eq!(submitted_name(b"name=Ada+L").as_deref(), Some("Ada L"));
        assert_eq!(
            submitted_name(br#"{"name": "Grace"}"#).as_deref(),
            Some("Grace")
        );
        assert_eq!(submitted_name(b"name="), None);
        assert_eq!(json_string("a\"b"), r#""a\"b""#);
    }
}
