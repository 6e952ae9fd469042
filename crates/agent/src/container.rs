//! What a container runs, from its spec and its image, by upstream's rules:
//! `command` replaces the image's entrypoint, `args` its cmd, and `$(VAR)`
//! names the container's environment.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Container;
use oci_spec::image::ImageConfiguration;

/// `$(VAR)` becomes VAR's value when VAR is defined, `$$` is a literal `$`,
/// and anything else stays as written.
pub fn expand(input: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The process's argv.
pub fn command_line(
    container: &Container,
    image: &ImageConfiguration,
    env: &HashMap<String, String>,
) -> Vec<String> {
    let config = image.config().as_ref();
    let entrypoint = config
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    let cmd = config.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let expand_all = |v: &Vec<String>| v.iter().map(|s| expand(s, env)).collect::<Vec<_>>();
    match (&container.command, &container.args) {
        (Some(command), args) if !command.is_empty() => {
            let mut argv = expand_all(command);
            argv.extend(args.as_ref().map(expand_all).unwrap_or_default());
            argv
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut argv = entrypoint;
            argv.extend(expand_all(args));
            argv
        }
        _ => entrypoint.into_iter().chain(cmd).collect(),
    }
}

/// `KEY=VALUE` pairs in order, later ones overriding earlier ones with the same key.
pub fn merge_env(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        match out.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

/// The image's `KEY=VALUE` environment.
pub fn image_env(image: &ImageConfiguration) -> Vec<(String, String)> {
    image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The image's working directory, `/` when it names none.
pub fn image_working_dir(image: &ImageConfiguration) -> String {
    image
        .config()
        .as_ref()
        .and_then(|c| c.working_dir().clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// The image's `USER` as uid and gid, looking names up in the image's own
/// /etc/passwd and /etc/group (read from `lookup`).
pub fn image_user(
    image: &ImageConfiguration,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(u32, Option<u32>), String> {
    let user = image
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    if user.is_empty() {
        return Ok((0, None));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user.as_str(), None),
    };
    let find = |file: &str, name: &str| -> Option<(u32, Option<u32>)> {
        lookup(file)?.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name)).then(|| {
                let id = fields.get(2)?.parse().ok()?;
                Some((id, fields.get(3).and_then(|g| g.parse().ok())))
            })?
        })
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => find("/etc/passwd", u).ok_or_else(|| {
            format!("unable to find user {u}: no matching entries in passwd file")
        })?,
    };
    let gid = match g {
        Some(g) => Some(match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => find("/etc/group", g).map(|(gid, _)| gid).ok_or_else(|| {
                format!("unable to find group {g}: no matching entries in group file")
            })?,
        }),
        None => primary_gid,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": entrypoint, "Cmd": cmd, "User": "app"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap()
    }

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        Container {
            command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
            args: args.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_upstream_precedence() {
        let img = image(&["/ep"], &["c1"]);
        let env = HashMap::new();
        assert_eq!(
            command_line(&container(None, None), &img, &env),
            ["/ep", "c1"]
        );
        assert_eq!(
            command_line(&container(None, Some(&["a"])), &img, &env),
            ["/ep", "a"]
        );
        assert_eq!(
            command_line(&container(Some(&["sh"]), None), &img, &env),
            ["sh"]
        );
        assert_eq!(
            command_line(&container(Some(&["sh"]), Some(&["-c", "x"])), &img, &env),
            ["sh", "-c", "x"]
        );
    }

    #[test]
    fn variables_expand_and_escapes_stay_literal() {
        let env: HashMap<String, String> = [("A".into(), "1".into())].into();
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("cost $5 $(A", &env), "cost $5 $(A");
    }

    #[test]
    fn later_env_wins() {
        let merged = merge_env([
            ("A".into(), "1".into()),
            ("B".into(), "2".into()),
            ("A".into(), "3".into()),
        ]);
        assert_eq!(
            merged,
            [("A".to_string(), "3".to_string()), ("B".into(), "2".into())]
        );
    }

    #[test]
    fn user_names_are_looked_up_in_the_image() {
        let img = image(&[], &[]);
        let files = |f: &str| match f {
            "/etc/passwd" => {
                Some("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n".to_string())
            }
            _ => None,
        };
        assert_eq!(image_user(&img, files), Ok((1000, Some(1001))));
        assert!(image_user(&img, |_| None).is_err());
    }
}
