//! Answers one query: from the cluster zone when the name is the cluster's,
//! from upstream otherwise.

use std::sync::Arc;

use hickory_proto::op::{Edns, Header, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use tokio::sync::watch;

use crate::forward::Forwarder;
use crate::records::{Answer, Zone};

/// How many CNAMEs in the zone an answer follows before it stops.
const MAX_CHAIN: usize = 8;

/// The sections of a response.
#[derive(Default)]
struct Sections {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additionals: Vec<Record>,
}

pub struct Handler {
    /// `None` until the caches hold a first complete list.
    pub zone: watch::Receiver<Option<Arc<Zone>>>,
    pub forwarder: Forwarder,
}

impl Handler {
    async fn upstream(&self, query: &Query) -> Sections {
        match self.forwarder.forward(query).await {
            Ok(mut message) => Sections {
                code: message.response_code(),
                authoritative: false,
                answers: message.take_answers(),
                authority: message.take_name_servers(),
                additionals: message.take_additionals(),
            },
            Err(e) => {
                tracing::debug!(name = %query.name(), "forwarding: {e}");
                Sections {
                    code: ResponseCode::ServFail,
                    ..Sections::default()
                }
            }
        }
    }

    async fn answer(&self, qname: &Name, qtype: RecordType) -> Sections {
        let zone = self.zone.borrow().clone();
        let Some(zone) = zone else {
            return Sections {
                code: ResponseCode::ServFail,
                ..Sections::default()
            };
        };
        let negative = |code| Sections {
            code,
            authoritative: true,
            authority: vec![zone.soa().clone()],
            ..Sections::default()
        };
        match zone.lookup(qname, qtype) {
            Answer::NotOurs => self.upstream(&Query::query(qname.clone(), qtype)).await,
            Answer::NxDomain => negative(ResponseCode::NXDomain),
            Answer::NoData => negative(ResponseCode::NoError),
            Answer::Records(mut answers) => {
                self.follow_cname(&zone, &mut answers, qtype).await;
                Sections {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers,
                    ..Sections::default()
                }
            }
        }
    }

    /// An ExternalName's CNAME comes with the addresses of its target, as
    /// CoreDNS resolves them, so stub resolvers that do not chase get them.
    async fn follow_cname(&self, zone: &Zone, answers: &mut Vec<Record>, qtype: RecordType) {
        if qtype == RecordType::CNAME {
            return;
        }
        for _ in 0..MAX_CHAIN {
            let Some(RData::CNAME(target)) = answers.last().map(Record::data) else {
                return;
            };
            let target = target.0.clone();
            match zone.lookup(&target, qtype) {
                Answer::Records(more) => answers.extend(more),
                Answer::NotOurs => {
                    let found = self.upstream(&Query::query(target, qtype)).await;
                    answers.extend(found.answers);
                    return;
                }
                _ => return,
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if request.edns().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            builder.edns(edns);
        }
        let query = match request.request_info() {
            Ok(info)
                if request.message_type() == MessageType::Query
                    && request.op_code() == OpCode::Query =>
            {
                Some(info.query.original().clone())
            }
            _ => None,
        };
        let sections = match query {
            Some(query) => self.answer(query.name(), query.query_type()).await,
            None => Sections {
                code: ResponseCode::NotImp,
                ..Sections::default()
            },
        };
        header.set_response_code(sections.code);
        header.set_authoritative(sections.authoritative);
        // The upstream's OPT record is its own; ours goes with the builder.
        let additionals = sections
            .additionals
            .iter()
            .filter(|r| r.record_type() != RecordType::OPT);
        let message = builder.build(
            header,
            sections.answers.iter(),
            sections.authority.iter(),
            std::iter::empty(),
            additionals,
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("sending a DNS answer: {e}");
                header.into()
            }
        }
    }
}
