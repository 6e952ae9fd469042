//! Warnings for the client, gathered while a request is handled (upstream
//! records them in the request's context) and sent as HTTP `Warning: 299`
//! headers, which kubectl prints as `Warning: ...`.

use std::cell::RefCell;
use std::future::Future;

use http::{HeaderValue, Response, header};

tokio::task_local! {
    static WARNINGS: RefCell<Vec<String>>;
}

/// Adds a warning to the request being handled; outside one, it is dropped.
pub fn add(message: impl Into<String>) {
    let message = message.into();
    let _ = WARNINGS.try_with(|w| {
        let mut w = w.borrow_mut();
        if !w.contains(&message) {
            w.push(message);
        }
    });
}

/// Runs a request's handling, returning what it answered and its warnings.
pub async fn gather<F: Future>(handling: F) -> (F::Output, Vec<String>) {
    WARNINGS
        .scope(RefCell::new(Vec::new()), async {
            let out = handling.await;
            (out, WARNINGS.with(|w| w.take()))
        })
        .await
}

/// Adds warnings to a response as upstream's `299 - "text"` headers.
pub fn attach<B>(resp: &mut Response<B>, warnings: &[String]) {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\""))) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn warnings_of_a_request_are_gathered_once_each() {
        add("outside any request");
        let ((), warnings) = gather(async {
            add("would violate PodSecurity");
            tokio::task::yield_now().await;
            add("would violate PodSecurity");
            add("another");
        })
        .await;
        assert_eq!(warnings, ["would violate PodSecurity", "another"]);
        let mut resp = Response::new(());
        attach(&mut resp, &["say \"hi\"".to_owned()]);
        assert_eq!(resp.headers()[header::WARNING], "299 - \"say \\\"hi\\\"\"");
    }
}
