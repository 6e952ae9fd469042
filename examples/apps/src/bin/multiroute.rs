//! The seeds' go-multiroute, in Rust: an HTTP server on :3000 whose routes
//! come from a config file (a ConfigMap mounted as a volume) and which
//! reads a database password from the environment (a Secret).
//!
//! `GET /<route>` answers `[<VERSION>] Hello, You are at /<route>, Got: <content>`
//! (no prefix when `VERSION` is unset); `/connect_db` shows the password it
//! got, `/get_ip` the pod IP (`POD_IP`), `/healthz` says ok.

use std::collections::BTreeMap;

use kubox_example_apps::env_or;
use kubox_example_apps::http::{self, Response};

/// The routes of a config file in the seeds' format:
/// `routes:` then one `  /path: "content"` line per route.
fn parse_routes(config: &str) -> BTreeMap<String, String> {
    let mut routes = BTreeMap::new();
    let mut inside = false;
    for line in config.lines() {
        if !line.starts_with([' ', '\t']) {
            inside = line.trim_end() == "routes:";
            continue;
        }
        if let Some((path, content)) = line.trim().split_once(':')
            && inside
        {
            let content = content.trim();
            let unquoted = content
                .strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .or_else(|| {
                    content
                        .strip_prefix('\'')
                        .and_then(|c| c.strip_suffix('\''))
                })
                .unwrap_or(content);
            routes.insert(path.trim().to_owned(), unquoted.to_owned());
        }
    }
    routes
}

fn main() {
    kubox_example_apps::exit_on_sigterm();
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name || a == &format!("-{}", name.trim_start_matches('-')))
            .and_then(|i| args.get(i + 1).cloned())
    };
    let config_path = flag("--config").unwrap_or_else(|| "/config/config.yml".into());
    let listen = flag("--listen").unwrap_or_else(|| "0.0.0.0:3000".into());
    let config = std::fs::read_to_string(&config_path).unwrap_or_else(|e| {
        eprintln!("reading {config_path}: {e}");
        std::process::exit(1)
    });
    let routes = parse_routes(&config);
    eprintln!("loaded {} routes from {config_path}", routes.len());
    let prefix = match std::env::var("VERSION") {
        Ok(v) if !v.is_empty() => format!("[{v}] "),
        _ => String::new(),
    };
    let result = http::serve(&listen, move |req| match req.path.as_str() {
        "/healthz" => Response::text(200, "ok"),
        "/connect_db" => Response::text(
            200,
            format!(
                "{prefix}connected to db with password {:?}\n",
                env_or("DB_PASS", "").trim_end()
            ),
        ),
        "/get_ip" => Response::text(200, format!("{prefix}{}\n", env_or("POD_IP", "unknown"))),
        path => match routes.get(path) {
            Some(content) => Response::text(
                200,
                format!("{prefix}Hello, You are at {path}, Got: {content}\n"),
            ),
            None => Response::text(404, format!("{prefix}404 page not found\n")),
        },
    });
    if let Err(e) = result {
        eprintln!("serving on {listen}: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_from_the_seeds_config() {
        let config = "routes:\n  /route1: \"route1's content\"\n  /route2: \"route2's content\"\nother:\n  /x: y\n";
        let routes = parse_routes(config);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes["/route1"], "route1's content");
    }
}
