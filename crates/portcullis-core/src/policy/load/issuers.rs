//! Issuers: names, `iss` values, pinned algorithms, the keys read
//! beforehand (see [`super::keys`]), subject prefixes and the groups a
//! token may assert.

use super::*;

impl Compiler<'_> {
    pub(super) fn issuers(&mut self) -> Issuers {
        let mut list = Vec::new();
        let mut specs = Vec::new();
        let mut names: HashMap<String, Origin> = HashMap::new();
        let mut values: HashMap<String, Origin> = HashMap::new();
        for (f, file) in self.files.iter().enumerate() {
            for (i, spec) in file.doc.issuers.iter().enumerate() {
                let at = [Step::Key("issuers"), Step::Index(i)];
                let line = self.line(f, &at);
                if let Some(first) = names.insert(spec.name.clone(), (f, line)) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("issuer {:?} is already defined at {first}", spec.name),
                    );
                    continue;
                }
                if let Some(first) = values.insert(spec.issuer.clone(), (f, line)) {
                    let first = self.origin(first);
                    self.error(
                        f,
                        &at,
                        format!("issuer value {:?} is already used at {first}", spec.issuer),
                    );
                    continue;
                }
                if let Some(issuer) = self.issuer(f, i, spec) {
                    list.push(issuer);
                }
                specs.push((f, i, spec));
            }
        }
        self.subject_prefixes(&specs);
        Issuers::new(list)
    }

    /// With several issuers, every issuer's subjects carry a prefix of its
    /// own, and no prefix starts another: a partner's `carol` is then never
    /// the corporate `carol` that grants, groups and denies name.
    fn subject_prefixes(&mut self, specs: &[(usize, usize, &IssuerSpec)]) {
        if specs.len() < 2 {
            return;
        }
        let at = |i| [Step::Key("issuers"), Step::Index(i), Step::Key("name")];
        for &(f, i, spec) in specs {
            let mine = spec.subject_prefix.as_deref().unwrap_or_default();
            if mine.is_empty() {
                self.error(f, &at(i), format!("issuer {:?} needs a subject_prefix (such as \"{}:\"): the policy trusts {} issuers, and a subject must name one issuer's subject only", spec.name, spec.name, specs.len()));
                continue;
            }
            let clash = specs.iter().find(|(_, _, other)| {
                let theirs = other.subject_prefix.as_deref().unwrap_or_default();
                other.name != spec.name && !theirs.is_empty() && mine.starts_with(theirs)
            });
            if let Some((_, _, other)) = clash {
                self.error(f, &at(i), format!("subject_prefix {mine:?} of issuer {:?} starts with the subject_prefix of issuer {:?}: their subjects could collide", spec.name, other.name));
            }
        }
    }

    fn issuer(&mut self, f: usize, i: usize, spec: &IssuerSpec) -> Option<Issuer> {
        let at = |key| [Step::Key("issuers"), Step::Index(i), Step::Key(key)];
        let mut ok = true;
        if spec.name.is_empty() {
            self.error(f, &at("name"), "issuer name is empty");
            ok = false;
        }
        if spec.issuer.is_empty() {
            self.error(f, &at("issuer"), "issuer value is empty");
            ok = false;
        }
        if spec.audiences.is_empty() || spec.audiences.iter().any(String::is_empty) {
            self.error(
                f,
                &at("audiences"),
                format!(
                    "issuer {:?} needs at least one non-empty audience",
                    spec.name
                ),
            );
            ok = false;
        }
        if spec.subject_claim.is_empty() {
            self.error(f, &at("subject_claim"), "subject_claim is empty");
            ok = false;
        }
        let groups_allowed: Vec<NamePattern> = spec
            .groups_allowed
            .iter()
            .map(|g| NamePattern::parse(g))
            .collect();
        match (&spec.groups_claim, spec.groups_allowed.is_empty()) {
            (Some(claim), true) => {
                self.error(f, &at("groups_claim"), format!("issuer {:?} reads groups from {claim:?} but lists no groups_allowed: name the policy groups its tokens may assert (or prefixes ending in *)", spec.name));
                ok = false;
            }
            (None, false) => {
                self.error(
                    f,
                    &at("groups_allowed"),
                    format!(
                        "issuer {:?} lists groups_allowed but no groups_claim to read them from",
                        spec.name
                    ),
                );
                ok = false;
            }
            _ => {}
        }
        if spec.groups_allowed.iter().any(|g| g.is_empty() || g == "*") {
            self.error(f, &at("groups_allowed"), "groups_allowed entries must be group names or prefixes ending in * (a bare * would let the token name any group)");
            ok = false;
        }
        let subject_prefix = spec.subject_prefix.clone().unwrap_or_default();
        if spec.subject_prefix.is_some()
            && !token::is_printable_name(&subject_prefix, token::MAX_SUBJECT_LEN)
        {
            self.error(
                f,
                &at("subject_prefix"),
                "subject_prefix must be non-empty printable text",
            );
            ok = false;
        }
        if let Some(jwt_authn) = &spec.jwt_authn {
            // Envoy verifies the token; no algorithm or key here.
            if !spec.algorithms.is_empty() || spec.key.is_some() {
                self.error(
                    f,
                    &at("jwt_authn"),
                    format!(
                        "issuer {:?} trusts jwt_authn: it takes no algorithms and no key",
                        spec.name
                    ),
                );
                return None;
            }
            if jwt_authn.payload_key.is_empty() {
                self.error(f, &at("jwt_authn"), "jwt_authn payload_key is empty");
                return None;
            }
            return ok.then(|| Issuer {
                name: Arc::from(spec.name.as_str()),
                issuer: spec.issuer.clone(),
                audiences: spec.audiences.clone(),
                algorithms: Vec::new(),
                keys: KeySet::Jwks(Vec::new()),
                leeway_seconds: spec.leeway_seconds,
                subject_claim: spec.subject_claim.clone(),
                subject_prefix,
                groups_claim: spec.groups_claim.clone(),
                groups_allowed,
                jwt_authn_payload: Some(jwt_authn.payload_key.clone()),
                keep_claims: false,
            });
        }
        let mut algorithms = Vec::new();
        for name in &spec.algorithms {
            match token::parse_algorithm(name) {
                Some(alg) => algorithms.push(alg),
                None => {
                    self.error(
                        f,
                        &at("algorithms"),
                        format!("unknown algorithm {name:?} (use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA)"),
                    );
                    ok = false;
                }
            }
        }
        if spec.algorithms.is_empty() {
            self.error(
                f,
                &at("algorithms"),
                format!("issuer {:?} pins no algorithm", spec.name),
            );
            ok = false;
        }
        let families: BTreeSet<String> = algorithms
            .iter()
            .map(|a| format!("{:?}", a.family()))
            .collect();
        if families.len() > 1 {
            self.error(
                f,
                &at("algorithms"),
                "algorithms of one issuer must share one key type (HMAC, RSA, EC or EdDSA)",
            );
            ok = false;
        }
        let keys = match self.keys(f, i, spec, &algorithms) {
            Ok(keys) => Some(keys),
            Err(message) => {
                self.error(f, &at("key"), format!("issuer {:?}: {message}", spec.name));
                None
            }
        };
        let keys = keys.filter(|_| ok)?;
        Some(Issuer {
            name: Arc::from(spec.name.as_str()),
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            algorithms,
            keys,
            leeway_seconds: spec.leeway_seconds,
            subject_claim: spec.subject_claim.clone(),
            subject_prefix,
            groups_claim: spec.groups_claim.clone(),
            groups_allowed,
            jwt_authn_payload: None,
            keep_claims: false,
        })
    }

    /// Compiles the key an issuer names (read by [`read_keys`]) and checks
    /// it fits its algorithms.
    fn keys(
        &mut self,
        f: usize,
        i: usize,
        spec: &IssuerSpec,
        algorithms: &[Algorithm],
    ) -> Result<KeySet, String> {
        let key = spec
            .key
            .as_ref()
            .ok_or("an issuer needs a key (or jwt_authn, to trust Envoy's verification)")?;
        let given = [
            key.secret_env.is_some(),
            key.secret_file.is_some(),
            key.public_key_file.is_some(),
            key.jwks_file.is_some(),
            key.jwks_url.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(
                "key must set exactly one of secret_env, secret_file, public_key_file, jwks_file, jwks_url"
                    .into(),
            );
        }
        let Some(family) = algorithms.first().map(|a| a.family()) else {
            return Err("no algorithm to check the key against".into());
        };
        let need = |wanted: AlgorithmFamily, what: &str| {
            if token::algorithms_fit(algorithms, wanted) {
                Ok(())
            } else {
                Err(format!("a {what} key cannot verify {algorithms:?}"))
            }
        };
        let is_secret = key.secret_env.is_some() || key.secret_file.is_some();
        let material = match self.keys.remove(&(f, i)) {
            Some(Ok(material)) => material,
            Some(Err(unreadable)) => {
                if self.unreadable == UnreadableKeys::Refuse {
                    return Err(unreadable);
                }
                // What the key would be is still checked against the
                // algorithms: only the missing bytes are forgiven.
                if is_secret {
                    need(AlgorithmFamily::Hmac, "shared-secret")?;
                } else if family == AlgorithmFamily::Hmac {
                    return Err("an HMAC algorithm needs a secret, not a public key".into());
                }
                let at = [Step::Key("issuers"), Step::Index(i), Step::Key("key")];
                let parsed = &self.files[f];
                self.warnings.push(Diagnostic {
                    file: parsed.path.to_path_buf(),
                    line: Some(parsed.lines.line_of(&at)),
                    message: format!(
                        "warning: issuer {:?}: {unreadable}; its tokens cannot be verified in this run (every one is refused)",
                        spec.name
                    ),
                });
                self.key_material.update(b"unverifiable\0");
                self.key_material.update(spec.name.as_bytes());
                return Ok(KeySet::Unverifiable(unreadable));
            }
            None => return Err("no key source".into()),
        };
        match material {
            KeyMaterial::Secret(secret) => {
                need(AlgorithmFamily::Hmac, "shared-secret")?;
                self.key_material.update(&secret);
                let min = algorithms
                    .iter()
                    .map(|a| token::min_secret_len(*a))
                    .max()
                    .unwrap_or(32);
                if secret.len() < min {
                    return Err(format!(
                        "the secret is {} bytes; {algorithms:?} needs at least {min}",
                        secret.len()
                    ));
                }
                Ok(KeySet::Single(DecodingKey::from_secret(&secret)))
            }
            KeyMaterial::Pem(path, pem) => {
                self.key_material.update(&pem);
                let key = match family {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                    AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
                    AlgorithmFamily::Hmac => {
                        return Err("an HMAC algorithm needs a secret, not a public key".into())
                    }
                };
                let key = key.map_err(|e| {
                    format!("{} is not a PEM {family:?} public key: {e}", path.display())
                })?;
                Ok(KeySet::Single(key))
            }
            KeyMaterial::Jwks(path, text) => {
                self.key_material.update(text.as_bytes());
                let set: JwkSet = serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a JWK set: {e}", path.display()))?;
                let keys = token::jwk_keys(&set, family);
                if keys.is_empty() {
                    return Err(format!(
                        "{} holds no {family:?} signing key",
                        path.display()
                    ));
                }
                Ok(KeySet::Jwks(keys))
            }
            KeyMaterial::Url => {
                let (Some(url), refresh) = (&key.jwks_url, &key.refresh) else {
                    return Err("no key source".into());
                };
                check_jwks_url(url)?;
                if algorithms
                    .iter()
                    .any(|a| a.family() == AlgorithmFamily::Hmac)
                {
                    return Err(
                        "a JWKS URL serves public keys: pin RS, PS, ES or EdDSA algorithms".into(),
                    );
                }
                if refresh.min_seconds == 0 || refresh.min_seconds > refresh.max_seconds {
                    return Err("refresh needs 0 < min_seconds <= max_seconds".into());
                }
                // The URL and its bounds are part of the version; the keys it
                // serves change without a new version, and a change clears the caches.
                self.key_material.update(url.as_bytes());
                let policy = RefreshPolicy {
                    min: Duration::from_secs(refresh.min_seconds),
                    max: Duration::from_secs(refresh.max_seconds),
                    unknown_kid: Duration::from_secs(refresh.unknown_kid_seconds),
                };
                Ok(KeySet::Remote(Arc::new(RemoteKeys::new(
                    url.clone(),
                    policy,
                    family,
                ))))
            }
        }
    }
}
