//! The CheckResponse written straight into tonic's send buffer.
//!
//! prost's `CheckResponse` owns every string it holds, so answering with
//! one copies the subject, the header names and the deny body into fresh
//! allocations on every check, only for the encoder to copy them again. An
//! [`Answer`] is the decision and the service's [`ResponseConfig`]; its
//! encoder writes the protobuf from them in place: the header names are
//! encoded once when the configuration is built, the rest (subject,
//! reason, deny body) is written from borrowed text.
//!
//! The bytes are exactly prost's encoding of [`adapter::check_response`]
//! for the same decision and configuration (`writes_what_prost_writes`
//! below compares them across every kind of answer), so
//! [`adapter::check_response`] stays the one readable statement of what
//! Envoy is told.

use std::marker::PhantomData;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use prost::bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

use crate::adapter::{self, ResponseConfig, ResponseParts};
use crate::engine::{Decision, DenyStatus, Effect, Reason};

/// A decision on its way to Envoy: encoded by [`AnswerCodec`].
#[derive(Debug, Clone)]
pub struct Answer {
    pub decision: Arc<Decision>,
    pub config: Arc<ResponseConfig>,
}

/// A protobuf field, borrowed: what one answer is made of, laid out on the
/// stack and written in one pass after its length is known.
enum Field<'a> {
    /// A string field; left out when empty, as proto3 does.
    Text(u32, &'a str),
    /// A string field written from pieces (a deny body, a header value).
    Joined(u32, &'a [&'a str]),
    /// An integer field; left out when zero.
    Int(u32, u64),
    /// A message field, written even when empty (a set `Option`).
    Message(u32, &'a [Field<'a>]),
    /// Fields encoded beforehand, written as they are.
    Encoded(&'a [u8]),
}

impl Field<'_> {
    fn len(&self) -> usize {
        match self {
            Field::Text(_, "") => 0,
            Field::Text(tag, text) => delimited_len(*tag, text.len()),
            Field::Joined(tag, parts) => {
                let len = joined_len(parts);
                if len == 0 {
                    0
                } else {
                    delimited_len(*tag, len)
                }
            }
            Field::Int(_, 0) => 0,
            Field::Int(tag, value) => key_len(*tag) + encoded_len_varint(*value),
            Field::Message(tag, fields) => delimited_len(*tag, message_len(fields)),
            Field::Encoded(bytes) => bytes.len(),
        }
    }

    fn put(&self, buf: &mut impl BufMut) {
        match self {
            Field::Text(_, "") => {}
            Field::Text(tag, text) => {
                encode_key(*tag, WireType::LengthDelimited, buf);
                encode_varint(text.len() as u64, buf);
                buf.put_slice(text.as_bytes());
            }
            Field::Joined(tag, parts) => {
                let len = joined_len(parts);
                if len != 0 {
                    encode_key(*tag, WireType::LengthDelimited, buf);
                    encode_varint(len as u64, buf);
                    for part in *parts {
                        buf.put_slice(part.as_bytes());
                    }
                }
            }
            Field::Int(_, 0) => {}
            Field::Int(tag, value) => {
                encode_key(*tag, WireType::Varint, buf);
                encode_varint(*value, buf);
            }
            Field::Message(tag, fields) => {
                encode_key(*tag, WireType::LengthDelimited, buf);
                encode_varint(message_len(fields) as u64, buf);
                for field in *fields {
                    field.put(buf);
                }
            }
            Field::Encoded(bytes) => buf.put_slice(bytes),
        }
    }
}

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn joined_len(parts: &[&str]) -> usize {
    parts.iter().map(|part| part.len()).sum()
}

fn message_len(fields: &[Field<'_>]) -> usize {
    fields.iter().map(Field::len).sum()
}

// Field numbers (envoy/service/auth/v3/external_auth.proto,
// google/rpc/status.proto, envoy/config/core/v3/base.proto,
// envoy/type/v3/http_status.proto).
const RESPONSE_STATUS: u32 = 1;
const RESPONSE_DENIED: u32 = 2;
const RESPONSE_OK: u32 = 3;
const STATUS_CODE: u32 = 1;
const STATUS_MESSAGE: u32 = 2;
const DENIED_STATUS: u32 = 1;
const DENIED_HEADERS: u32 = 2;
const DENIED_BODY: u32 = 3;
const HTTP_STATUS_CODE: u32 = 1;
const OK_HEADERS: u32 = 2;
pub(crate) const OK_HEADERS_TO_REMOVE: u32 = 5;
const OK_RESPONSE_HEADERS_TO_ADD: u32 = 6;
const OPTION_HEADER: u32 = 1;
const OPTION_APPEND_ACTION: u32 = 3;
const HEADER_KEY: u32 = 1;
const HEADER_VALUE: u32 = 2;

/// `HeaderValueOption { header: { key, value }, append_action:
/// OVERWRITE_IF_EXISTS_OR_ADD }`, as `adapter::header` builds it.
fn header<'a>(fields: &'a [Field<'a>; 2]) -> [Field<'a>; 2] {
    [
        Field::Message(OPTION_HEADER, fields),
        Field::Int(OPTION_APPEND_ACTION, adapter::OVERWRITE as u64),
    ]
}

/// True when serde_json writes `text` inside quotes as it is.
fn plain_json(text: &str) -> bool {
    !text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

impl Answer {
    /// Writes the CheckResponse (the message itself, unframed).
    pub fn write_to(&self, buf: &mut impl BufMut) {
        let decision = &*self.decision;
        let code = decision.reason.code();
        if matches!(
            decision.reason,
            Reason::ConnectionAllowed | Reason::ConnectionDenied
        ) {
            let status = [
                Field::Int(STATUS_CODE, adapter::grpc_code(decision) as u64),
                Field::Text(STATUS_MESSAGE, code),
            ];
            Field::Message(RESPONSE_STATUS, &status).put(buf);
            return;
        }
        match decision.effect {
            Effect::Deny(status) if !decision.dry_run => self.encode_deny(status, buf),
            _ => self.encode_let_through(buf),
        }
    }

    fn encode_let_through(&self, buf: &mut impl BufMut) {
        let decision = &*self.decision;
        let parts: &ResponseParts = self.config.parts();
        let subject = decision.subject.as_deref().unwrap_or_default();
        let subject_header = [
            Field::Encoded(&parts.subject_key),
            Field::Text(HEADER_VALUE, subject),
        ];
        let subject_option = header(&subject_header);
        let dry_run_status = match decision.effect {
            Effect::Deny(status) => status_text(status),
            Effect::Allow => "",
        };
        let dry_run_value = [
            "would-deny; status=",
            dry_run_status,
            "; reason=",
            decision.reason.code(),
        ];
        let dry_run_header = [
            Field::Text(HEADER_KEY, adapter::DRY_RUN_HEADER),
            Field::Joined(HEADER_VALUE, &dry_run_value),
        ];
        let dry_run_option = header(&dry_run_header);
        let ok = [
            match &decision.subject {
                Some(_) => Field::Message(OK_HEADERS, &subject_option),
                None => Field::Encoded(&[]),
            },
            match &decision.subject {
                Some(_) => Field::Encoded(&parts.remove_look_alikes),
                None => Field::Encoded(&parts.remove_subject),
            },
            if decision.is_allowed() {
                Field::Encoded(&[])
            } else {
                Field::Message(OK_RESPONSE_HEADERS_TO_ADD, &dry_run_option)
            },
        ];
        Field::Message(RESPONSE_STATUS, &[]).put(buf);
        Field::Message(RESPONSE_OK, &ok).put(buf);
    }

    fn encode_deny(&self, status: DenyStatus, buf: &mut impl BufMut) {
        let decision = &*self.decision;
        let (grpc_code, error) = adapter::deny_codes(status);
        let public = decision.reason.public_message();
        // serde_json's escaping is needed only for text it would change.
        let escaped;
        let public = if plain_json(public) {
            public
        } else {
            escaped = serde_json::to_string(public).unwrap_or_default();
            escaped
                .get(1..escaped.len().saturating_sub(1))
                .unwrap_or("")
        };
        let body = [r#"{"error":""#, error, r#"","reason":""#, public, r#""}"#];
        let content_type = [
            Field::Text(HEADER_KEY, "content-type"),
            Field::Text(HEADER_VALUE, "application/json"),
        ];
        let content_type = header(&content_type);
        let description = [
            adapter::CHALLENGE,
            ", error=\"invalid_token\", error_description=\"",
            // Unescaped, as `adapter::www_authenticate` writes it.
            decision.reason.public_message(),
            "\"",
        ];
        let www_authenticate = [
            Field::Text(HEADER_KEY, "www-authenticate"),
            match decision.reason {
                Reason::MissingCredentials => Field::Text(HEADER_VALUE, adapter::CHALLENGE),
                _ => Field::Joined(HEADER_VALUE, &description),
            },
        ];
        let www_authenticate = header(&www_authenticate);
        let http_status = [Field::Int(HTTP_STATUS_CODE, u64::from(status.code()))];
        let denied = [
            Field::Message(DENIED_STATUS, &http_status),
            Field::Message(DENIED_HEADERS, &content_type),
            if status == DenyStatus::Unauthorized {
                Field::Message(DENIED_HEADERS, &www_authenticate)
            } else {
                Field::Encoded(&[])
            },
            Field::Joined(DENIED_BODY, &body),
        ];
        let rpc_status = [
            Field::Int(STATUS_CODE, grpc_code as u64),
            Field::Text(STATUS_MESSAGE, decision.reason.code()),
        ];
        Field::Message(RESPONSE_STATUS, &rpc_status).put(buf);
        Field::Message(RESPONSE_DENIED, &denied).put(buf);
    }
}

/// A deny status's code as text, for the dry-run header.
fn status_text(status: DenyStatus) -> &'static str {
    match status {
        DenyStatus::BadRequest => "400",
        DenyStatus::Unauthorized => "401",
        DenyStatus::Forbidden => "403",
    }
}

/// The ext_authz codec: prost decodes the CheckRequest, [`Answer`] writes
/// the CheckResponse.
#[derive(Debug, Default, Clone, Copy)]
pub struct AnswerCodec;

impl Codec for AnswerCodec {
    type Encode = Answer;
    type Decode = CheckRequest;
    type Encoder = AnswerEncoder;
    type Decoder = ProstDecoder<CheckRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        AnswerEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Writes an [`Answer`] into tonic's buffer.
#[derive(Debug)]
pub struct AnswerEncoder(PhantomData<Answer>);

impl Encoder for AnswerEncoder {
    type Item = Answer;
    type Error = Status;

    fn encode(&mut self, answer: Answer, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        answer.write_to(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::CredentialError;
    use crate::path::PathError;
    use crate::token::TokenError;
    use prost::Message;

    fn reasons() -> Vec<Reason> {
        vec![
            Reason::PublicRoute,
            Reason::Authenticated,
            Reason::Granted,
            Reason::BadPath(PathError::TooLong),
            Reason::BadHost,
            Reason::NoApplication,
            Reason::AmbiguousApplication,
            Reason::NoRoute,
            Reason::MissingCredentials,
            Reason::BadCredentials(CredentialError::NotBearer),
            Reason::InvalidToken(TokenError::Expired),
            Reason::InvalidToken(TokenError::BadSignature),
            Reason::InvalidToken(TokenError::Malformed("header")),
            Reason::ExplicitDeny,
            Reason::NoGrant,
            Reason::ConditionNotMet,
            Reason::InternalError,
            Reason::ConnectionAllowed,
            Reason::ConnectionDenied,
            Reason::GrantsUnavailable,
            Reason::UnknownAction,
        ]
    }

    /// Every kind of answer: each reason as an allow and as each deny,
    /// with and without a subject, in dry run and not.
    fn decisions() -> Vec<Decision> {
        let effects = [
            Effect::Allow,
            Effect::Deny(DenyStatus::BadRequest),
            Effect::Deny(DenyStatus::Unauthorized),
            Effect::Deny(DenyStatus::Forbidden),
        ];
        let mut all = Vec::new();
        for reason in reasons() {
            for effect in effects {
                for subject in [None, Some("alice"), Some(""), Some("ü \"x\"")] {
                    for dry_run in [false, true] {
                        let mut decision = Decision::deny(DenyStatus::Forbidden, reason.clone());
                        decision.effect = effect;
                        decision.subject = subject.map(Arc::from);
                        decision.dry_run = dry_run;
                        all.push(decision);
                    }
                }
            }
        }
        all
    }

    #[test]
    fn writes_what_prost_writes() {
        let configs = [
            ResponseConfig::default(),
            ResponseConfig::new("X-User_Id"),
            ResponseConfig::new("subject"),
        ];
        let mut compared = 0;
        for config in configs {
            let config = Arc::new(config);
            for decision in decisions() {
                let expected = adapter::check_response(&decision, &config).encode_to_vec();
                let answer = Answer {
                    decision: Arc::new(decision),
                    config: config.clone(),
                };
                let mut written = Vec::new();
                answer.write_to(&mut written);
                assert_eq!(
                    written, expected,
                    "the encoded answer differs from prost's for {:?}",
                    answer.decision
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 3 * 21 * 4 * 4 * 2);
    }
}
