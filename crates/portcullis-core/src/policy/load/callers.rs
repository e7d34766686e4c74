//! Callers of the AuthZEN API: names, the one credential each proves
//! itself with (API keys read and hashed beforehand, see [`super::keys`]),
//! and what each may ask.

use super::*;
use crate::policy::callers::{Caller, CallerCredential, Callers, Permissions};
use crate::policy::source::{CallerPermission, CallerSpec};

impl Compiler<'_> {
    pub(super) fn callers(&mut self) -> Callers {
        let mut list = Vec::new();
        let mut names: HashMap<String, Origin> = HashMap::new();
        let mut credentials: Vec<(CallerCredential, Origin)> = Vec::new();
        for (f, file) in self.files.iter().enumerate() {
            for (i, spec) in file.doc.callers.iter().enumerate() {
                let at = [Step::Key("callers"), Step::Index(i)];
                let here = (f, self.line(f, &at));
                if let Some(first) = names.insert(spec.name.clone(), here) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("caller {:?} is already defined at {first}", spec.name),
                    );
                    continue;
                }
                let Some(caller) = self.caller(f, i, spec) else {
                    continue;
                };
                // Two callers with one credential: which one asks would be
                // a guess, and so would its permissions.
                if let Some((_, first)) = credentials.iter().find(|(c, _)| *c == caller.credential)
                {
                    let first = self.origin(*first);
                    self.error(
                        f,
                        &at,
                        format!(
                            "caller {:?} proves itself with the same credential as the caller at {first}",
                            spec.name
                        ),
                    );
                    continue;
                }
                credentials.push((caller.credential.clone(), here));
                list.push(caller);
            }
        }
        Callers::new(list)
    }

    fn caller(&mut self, f: usize, i: usize, spec: &CallerSpec) -> Option<Caller> {
        let at = |key| [Step::Key("callers"), Step::Index(i), Step::Key(key)];
        if !token::is_printable_name(&spec.name, 128) {
            self.error(
                f,
                &at("name"),
                "caller name must be non-empty printable text",
            );
            return None;
        }
        let given = [
            spec.api_key.is_some(),
            spec.client_certificate.is_some(),
            spec.token_subject.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.error(
                f,
                &[Step::Key("callers"), Step::Index(i)],
                format!(
                    "caller {:?} must set exactly one of api_key, client_certificate, token_subject",
                    spec.name
                ),
            );
            return None;
        }
        let credential = if let Some(secret) = &spec.api_key {
            if usize::from(secret.secret_env.is_some()) + usize::from(secret.secret_file.is_some())
                != 1
            {
                self.error(
                    f,
                    &at("api_key"),
                    "api_key must set exactly one of secret_env, secret_file (the key itself never goes in a policy file)",
                );
                return None;
            }
            match self.caller_keys.remove(&(f, i)) {
                Some(Ok(digest)) => {
                    self.key_material.update(digest);
                    CallerCredential::ApiKey(digest)
                }
                Some(Err(unreadable)) if self.unreadable == UnreadableKeys::Unverifiable => {
                    // The case runner never authenticates a caller.
                    self.warnings.push(Diagnostic {
                        file: self.files[f].path.to_path_buf(),
                        line: Some(self.line(f, &at("api_key"))),
                        message: format!("caller {:?}: {unreadable}; it is left out", spec.name),
                    });
                    return None;
                }
                Some(Err(unreadable)) => {
                    self.error(
                        f,
                        &at("api_key"),
                        format!("caller {:?}: {unreadable}", spec.name),
                    );
                    return None;
                }
                None => {
                    self.error(f, &at("api_key"), "the API key was not read");
                    return None;
                }
            }
        } else if let Some(certificate) = &spec.client_certificate {
            match (&certificate.dns_name, &certificate.spiffe_id) {
                (Some(dns_name), None) => {
                    let name = dns_name.to_ascii_lowercase();
                    if rustls_pki_types::DnsName::try_from(name.as_str()).is_err()
                        || name.contains('*')
                    {
                        self.error(
                            f,
                            &at("client_certificate"),
                            format!(
                                "caller {:?}: {dns_name:?} is not a DNS name (no wildcards)",
                                spec.name
                            ),
                        );
                        return None;
                    }
                    CallerCredential::ClientCertificate { dns_name: name }
                }
                (None, Some(id)) => {
                    if let Err(why) = crate::policy::callers::check_spiffe_id(id) {
                        self.error(
                            f,
                            &at("client_certificate"),
                            format!("caller {:?}: {id:?} is not a SPIFFE id: {why}", spec.name),
                        );
                        return None;
                    }
                    CallerCredential::SpiffeId(id.clone())
                }
                _ => {
                    self.error(
                        f,
                        &at("client_certificate"),
                        format!(
                            "caller {:?}: client_certificate must set exactly one of dns_name, spiffe_id",
                            spec.name
                        ),
                    );
                    return None;
                }
            }
        } else {
            let subject = spec.token_subject.clone().unwrap_or_default();
            if !token::is_printable_name(&subject, token::MAX_SUBJECT_LEN) {
                self.error(
                    f,
                    &at("token_subject"),
                    "token_subject must be non-empty printable text",
                );
                return None;
            }
            CallerCredential::TokenSubject(subject)
        };
        let mut may = Permissions::default();
        for permission in &spec.may {
            match permission {
                CallerPermission::AnySubject => may.any_subject = true,
                CallerPermission::Search => may.search = true,
                CallerPermission::Explain => may.explain = true,
                CallerPermission::Sign => may.sign = true,
                CallerPermission::WriteGrants => may.write_grants = true,
                CallerPermission::Console => may.console = true,
            }
        }
        Some(Caller {
            name: spec.name.clone(),
            credential,
            may,
        })
    }
}
