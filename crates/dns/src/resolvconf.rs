//! resolv.conf as the resolver reads it: nameservers, a search list and
//! options. The upstreams of cluster DNS come from the host's, and pods'
//! files are written from these parts.

use std::net::IpAddr;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text. As the resolver does, the last `search` or
    /// `domain` line wins and options accumulate; unreadable lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A zone index (fe80::1%eth0) names a link the pod does not have.
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search" | "domain") => {
                    conf.searches = words.map(str::to_owned).collect();
                }
                Some("options") => conf.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        conf
    }

    /// The host's `/etc/resolv.conf` (or another file), empty when it cannot be read.
    pub fn read(path: &std::path::Path) -> Self {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_resolver_reads() {
        let conf = ResolvConf::parse(
            "# generated\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver 1.1.1.1 ; second\n\
             domain example.org\nsearch a.example b.example\noptions ndots:2\noptions edns0 timeout:1\n",
        );
        assert_eq!(
            conf.nameservers,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "1.1.1.1".parse().unwrap()
            ]
        );
        assert_eq!(conf.searches, ["a.example", "b.example"]);
        assert_eq!(conf.options, ["ndots:2", "edns0", "timeout:1"]);
        assert_eq!(
            conf.render(),
            "search a.example b.example\nnameserver 10.0.0.2\nnameserver 1.1.1.1\noptions ndots:2 edns0 timeout:1\n"
        );
    }
}
