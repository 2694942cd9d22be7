//! Client auth (bearer JWTs) through the client API on one node: every bad token is a 401
//! with the `WWW-Authenticate` challenge and no trace of the token in the reply; every
//! permission rule of every route, each with an allowed and a denied request (a denial is
//! 403 `permission_denied` and changes nothing); leases belonging to their subject; RS256,
//! ES256 and EdDSA keys from PEM and from a JWKS picked by `kid`; key rotation by rewriting
//! the JWKS file while the node runs.
//!
//! Keys: HS256 with a secret written here; EC P-256 and Ed25519 pairs generated with
//! `rcgen`; RSA from the test-only pair in `tests/fixtures/auth/`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Method, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use palisade::config::Config;
use serde_json::{json, Value};

use crate::http_api::harness::{with_node_config, Api, Resp};

const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;
const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;
/// The node's HS256 secret (written with a final newline, which is not part of it).
const SECRET: &[u8] = b"palisade-auth-test-secret-0123456789abcdef";
const CHALLENGE: &str = "Bearer realm=\"palisade\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"palisade\", error=\"invalid_token\"";

// ---- tokens ----

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is past 1970").as_secs()
}

/// Claims for `sub` with these grants, valid for an hour.
fn claims(sub: &str, grants: Value) -> Value {
    json!({"sub": sub, "exp": now() + 3600, "palisade": grants})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("the token signs")
}

fn secret_key(secret: &[u8]) -> EncodingKey {
    EncodingKey::from_secret(secret).expect("an HMAC key")
}

/// An HS256 token over `claims` with the node's secret.
fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, &secret_key(SECRET), None, claims)
}

/// An HS256 token for `sub` with these grants.
fn token(sub: &str, grants: Value) -> String {
    hs(&claims(sub, grants))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A hand-made HS256 token with this header and payload text, signed with `secret`.
fn hand_signed(header: &str, payload: &[u8], secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// A key pair: what signs, and the public key in PEM.
struct Pair {
    alg: Algorithm,
    private: EncodingKey,
    public_pem: String,
    /// The raw public key (an Ed25519 JWK's `x`).
    public_raw: Vec<u8>,
}

impl Pair {
    fn ec() -> Pair {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("an EC key");
        Pair {
            alg: Algorithm::ES256,
            private: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("a PKCS#8 EC key"),
            public_pem: kp.public_key_pem(),
            public_raw: kp.public_key_raw().to_vec(),
        }
    }

    fn ed() -> Pair {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key");
        Pair {
            alg: Algorithm::EdDSA,
            private: EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).expect("a PKCS#8 Ed25519 key"),
            public_pem: kp.public_key_pem(),
            public_raw: kp.public_key_raw().to_vec(),
        }
    }

    /// The committed test-only RSA pair.
    fn rsa() -> Pair {
        let private = std::fs::read(fixture("rsa_private.pem")).expect("the RSA fixture");
        Pair {
            alg: Algorithm::RS256,
            private: EncodingKey::from_rsa_pem(&private).expect("an RSA private key"),
            public_pem: std::fs::read_to_string(fixture("rsa_public.pem")).expect("the RSA fixture"),
            public_raw: Vec::new(),
        }
    }

    fn token(&self, kid: Option<&str>, claims: &Value) -> String {
        sign(self.alg, &self.private, kid, claims)
    }

    /// Its public key as a JWK with this `kid`.
    fn jwk(&self, kid: &str) -> Value {
        if self.alg == Algorithm::EdDSA {
            // (`Jwk::from_encoding_key` takes PKCS#8 v1 only; rcgen writes v2.)
            return json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&self.public_raw), "kid": kid, "alg": "EdDSA"});
        }
        let mut jwk = Jwk::from_encoding_key(&self.private, self.alg).expect("a JWK");
        jwk.common.key_id = Some(kid.to_string());
        serde_json::to_value(jwk).expect("a JWK serialises")
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn jwks(keys: &[(&Pair, &str)]) -> String {
    let text = json!({"keys": keys.iter().map(|(p, kid)| p.jwk(kid)).collect::<Vec<_>>()}).to_string();
    serde_json::from_str::<JwkSet>(&text).expect("a well-formed JWKS");
    text
}

// ---- nodes ----

/// A node with HS256 client auth (and `tweak`), handed to `test` without a token.
async fn with_auth<Fut: Future<Output = ()>>(tweak: impl FnOnce(&mut Config), test: impl FnOnce(Api) -> Fut) {
    let keys = tempfile::tempdir().expect("a temp dir");
    let secret = keys.path().join("jwt.secret");
    std::fs::write(&secret, [SECRET, b"\n"].concat()).expect("the secret is written");
    with_node_config(
        |cfg| {
            cfg.auth_jwt_secret_file = Some(secret);
            tweak(cfg);
        },
        test,
    )
    .await;
    drop(keys);
}

/// A node whose only keys are the public keys in `file` (PEM or JWKS).
async fn with_public_keys<Fut: Future<Output = ()>>(file: &Path, test: impl FnOnce(Api) -> Fut) {
    let file = file.to_path_buf();
    with_node_config(|cfg| cfg.auth_jwt_public_keys = Some(file), test).await;
}

fn admin(api: &Api) -> Api {
    api.with_token(&token("root", json!({"admin": true})))
}

// ---- assertions ----

/// Runs `req`, which must be refused with 403 `permission_denied` and change nothing (as
/// `admin` sees the store). Returns the error object.
async fn denied(admin: &Api, req: impl Future<Output = Resp>) -> Value {
    let before = admin.snapshot().await;
    let r = req.await;
    let err = r.error(FORBIDDEN, "permission_denied");
    assert_eq!(admin.snapshot().await, before, "{}: a refused request changed the store", r.what);
    err
}

/// Sends a write with these headers, which must be refused 401 with this challenge and
/// change nothing; no part of `secrets` may appear in the reply. Returns the message.
async fn unauthenticated(admin: &Api, anon: &Api, headers: &[(&str, &str)], secrets: &[&str]) -> String {
    let before = admin.snapshot().await;
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let started = Instant::now();
    let r = anon.send_with_headers(Method::PUT, "/v1/kv/victim", Body::from(r#"{"value":"x"}"#), &all).await;
    let took = started.elapsed();
    let err = r.error(UNAUTHORIZED, "unauthenticated");
    let challenge = if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")) {
        CHALLENGE_INVALID
    } else {
        CHALLENGE
    };
    assert_eq!(r.header("www-authenticate"), Some(challenge), "{:?}", err);
    let text = r.text();
    for s in secrets {
        for part in s.split('.').filter(|p| p.len() >= 8) {
            assert!(!text.contains(part), "the reply repeats the token: {text}");
        }
        assert!(
            !text.contains(&String::from_utf8_lossy(SECRET).to_string()),
            "the reply has the secret: {text}"
        );
    }
    assert!(took < Duration::from_secs(2), "a bad token took {took:?} to refuse");
    assert_eq!(admin.snapshot().await, before, "a refused request changed the store");
    err["message"].as_str().unwrap().to_string()
}

/// A request with `Authorization: Bearer <t>` that must be refused 401.
async fn bad_token(admin: &Api, anon: &Api, t: &str) -> String {
    let header = format!("Bearer {t}");
    unauthenticated(admin, anon, &[("authorization", &header)], &[t]).await
}

/// A request with `Authorization: Bearer <t>` that must be let in (a read of /v1/cluster).
async fn good_token(api: &Api, t: &str) {
    let r = api.with_token(t).get("/v1/cluster").await;
    assert_eq!(r.status, StatusCode::OK, "a good token was refused: {}", r.text());
}

/// Opens a stream; its status, and the error body when refused.
async fn open(api: &Api, uri: &str) -> (StatusCode, Option<Value>) {
    let resp = api.open(uri, &[]).await;
    let status = resp.status();
    if status == StatusCode::OK {
        return (status, None);
    }
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("the body reads");
    (status, Some(serde_json::from_slice(&body).expect("an error body is JSON")))
}

async fn open_denied(admin: &Api, api: &Api, uri: &str) {
    let before = admin.snapshot().await;
    let (status, body) = open(api, uri).await;
    assert_eq!(status, FORBIDDEN, "GET {uri}: {body:?}");
    assert_eq!(body.unwrap()["error"]["code"], json!("permission_denied"), "GET {uri}");
    assert_eq!(admin.snapshot().await, before);
}

fn put_body(v: &str) -> Value {
    json!({ "value": v })
}

// ---- tokens: who is let in ----

#[tokio::test]
async fn health_is_open_and_every_api_route_needs_a_token() {
    with_auth(
        |_| {},
        |api| async move {
            assert_eq!(api.get("/healthz").await.status, StatusCode::OK);
            assert_eq!(api.get("/readyz").await.status, StatusCode::OK);
            let admin = admin(&api);
            admin.set("/a", "1").await;
            let before = admin.snapshot().await;
            let mut checked = 0;
            for (method, path) in palisade::http::CLIENT_ROUTES {
                if !path.starts_with("/v1/") {
                    continue;
                }
                let uri = path.replace("{*key}", "a").replace("{id}", "1").replace("{name}", "n");
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let (body, ct) = match method {
                    Method::GET | Method::DELETE => (Body::empty(), None),
                    _ => (Body::from("{}"), Some("application/json")),
                };
                let r = api.send(method, &uri, body, ct).await;
                r.error(UNAUTHORIZED, "unauthenticated");
                assert_eq!(r.header("www-authenticate"), Some(CHALLENGE), "{}", r.what);
                checked += 1;
            }
            assert!(checked >= 20, "only {checked} routes");
            assert_eq!(admin.snapshot().await, before);
            // /v1/cluster takes any valid token, even one with no permission at all.
            let nobody = api.with_token(&hs(&json!({"sub": "nobody", "exp": now() + 60})));
            nobody.get("/v1/cluster").await.ok();
            denied(&admin, nobody.get("/v1/kv/a")).await;
            // A lower-case scheme is the same scheme.
            let lower = format!("bearer {}", token("x", json!({"read": ["/"]})));
            let r = api
                .send_with_headers(Method::GET, "/v1/kv/a", Body::empty(), &[("authorization", &lower)])
                .await;
            r.ok();
        },
    )
    .await
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_never_repeated() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            let all = json!({"read": ["/"], "write": ["/"], "admin": true});
            // No header at all: the bare challenge.
            let m = unauthenticated(&admin, &api, &[], &[]).await;
            assert!(m.contains("Bearer"), "{m}");
            let good = token("alice", all.clone());
            // Another scheme.
            let basic = format!("Basic {}", b64(b"alice:secret"));
            unauthenticated(&admin, &api, &[("authorization", &basic)], &["YWxpY2U6c2VjcmV0"]).await;
            // Two Authorization headers, even two good ones.
            let bearer = format!("Bearer {good}");
            let m = unauthenticated(
                &admin,
                &api,
                &[("authorization", &bearer), ("authorization", &bearer)],
                &[&good],
            )
            .await;
            assert!(m.contains("one Authorization header"), "{m}");
            // Expired beyond the leeway (10 s by default); within it, still good.
            let expired = hs(&json!({"sub": "alice", "exp": now() - 60, "palisade": all}));
            let m = bad_token(&admin, &api, &expired).await;
            assert!(m.contains("expired"), "{m}");
            good_token(&api, &hs(&json!({"sub": "alice", "exp": now() - 3, "palisade": all}))).await;
            // Not valid yet beyond the leeway; within it, good.
            let early = hs(&json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 120}));
            let m = bad_token(&admin, &api, &early).await;
            assert!(m.contains("nbf"), "{m}");
            good_token(&api, &hs(&json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 3}))).await;
            // No exp, no sub, an empty or too long sub.
            bad_token(&admin, &api, &hs(&json!({"sub": "alice", "palisade": all}))).await;
            let m = bad_token(&admin, &api, &hs(&json!({"exp": now() + 60, "palisade": all}))).await;
            assert!(m.contains("sub"), "{m}");
            bad_token(&admin, &api, &hs(&json!({"sub": "", "exp": now() + 60}))).await;
            let long = "s".repeat(257);
            let m = bad_token(&admin, &api, &hs(&json!({"sub": long, "exp": now() + 60}))).await;
            assert!(m.contains("256"), "{m}");
            good_token(&api, &hs(&json!({"sub": "s".repeat(256), "exp": now() + 60}))).await;
            // An unknown field in the palisade claim; a malformed grant.
            let m = bad_token(&admin, &api, &token("alice", json!({"read": ["/"], "superuser": true}))).await;
            assert!(m.contains("unknown field"), "{m}");
            bad_token(&admin, &api, &token("alice", json!({"read": ["app/"]}))).await;
            bad_token(&admin, &api, &token("alice", json!({"read": "/"}))).await;
            // Signed with another secret.
            let forged = sign(Algorithm::HS256, &secret_key(&[7u8; 40]), None, &claims("alice", all.clone()));
            let m = bad_token(&admin, &api, &forged).await;
            assert!(m.contains("signature"), "{m}");
            // A good token with its signature cut off or swapped.
            let (head, _) = good.rsplit_once('.').unwrap();
            bad_token(&admin, &api, &format!("{head}.")).await;
            bad_token(&admin, &api, &format!("{head}.{}", b64(&[0u8; 32]))).await;
            // alg none, hand-built.
            let none = format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims("alice", all.clone()).to_string().as_bytes())
            );
            bad_token(&admin, &api, &none).await;
            let none_upper = format!(
                "{}.{}.",
                b64(br#"{"alg":"None","typ":"JWT"}"#),
                b64(claims("alice", all.clone()).to_string().as_bytes())
            );
            bad_token(&admin, &api, &none_upper).await;
            // HS512 with the very secret the node holds.
            let hs512 = sign(Algorithm::HS512, &secret_key(SECRET), None, &claims("alice", all.clone()));
            let m = bad_token(&admin, &api, &hs512).await;
            assert!(m.contains("HS512"), "{m}");
            // A public-key token on a node with only a secret.
            let rs = Pair::rsa().token(None, &claims("alice", all.clone()));
            bad_token(&admin, &api, &rs).await;
            // Malformed: parts, base64, JSON.
            for t in ["abc", "a.b", "a.b.c.d", "!!!.@@@.###", "..", "eyJ.eyJ.sig"] {
                let m = bad_token(&admin, &api, t).await;
                assert!(!m.is_empty());
            }
            let garbage = hand_signed(r#"{"alg":"HS256","typ":"JWT"}"#, b"not json {", SECRET);
            bad_token(&admin, &api, &garbage).await;
            let bad_header =
                hand_signed("{not json", claims("alice", all.clone()).to_string().as_bytes(), SECRET);
            bad_token(&admin, &api, &bad_header).await;
            // The hand-built signer is right: the same claims as JSON pass.
            let fine = hand_signed(
                r#"{"alg":"HS256","typ":"JWT"}"#,
                claims("alice", all.clone()).to_string().as_bytes(),
                SECRET,
            );
            good_token(&api, &fine).await;
            // Over 8192 bytes: refused before it is decoded, at once.
            let big = hs(&json!({"sub": "alice", "exp": now() + 60, "pad": "x".repeat(9000)}));
            assert!(big.len() > 8192);
            let m = bad_token(&admin, &api, &big).await;
            assert!(m.contains("8192"), "{m}");
            // Not ASCII.
            let r = api
                .send_with_headers(
                    Method::GET,
                    "/v1/kv/a",
                    Body::empty(),
                    &[("authorization", "Bearer \u{e9}t\u{e9}")],
                )
                .await;
            r.error(UNAUTHORIZED, "unauthenticated");
            // An empty bearer.
            unauthenticated(&admin, &api, &[("authorization", "Bearer ")], &[]).await;
            // The good one still works after all that.
            good_token(&api, &good).await;
        },
    )
    .await
}

#[tokio::test]
async fn issuer_and_audience_are_required_and_checked_when_configured() {
    with_auth(
        |cfg| {
            cfg.auth_jwt_issuer = Some("https://issuer.test".into());
            cfg.auth_jwt_audience = Some("palisade-test".into());
        },
        |api| async move {
            let with = |iss: Option<&str>, aud: Option<Value>| {
                let mut c = json!({"sub": "root", "exp": now() + 600, "palisade": {"admin": true}});
                if let Some(iss) = iss {
                    c["iss"] = json!(iss);
                }
                if let Some(aud) = aud {
                    c["aud"] = aud;
                }
                hs(&c)
            };
            let good = with(Some("https://issuer.test"), Some(json!("palisade-test")));
            let admin = api.with_token(&good);
            good_token(&api, &good).await;
            good_token(&api, &with(Some("https://issuer.test"), Some(json!(["other", "palisade-test"]))))
                .await;
            let m = bad_token(&admin, &api, &with(Some("https://issuer.test"), Some(json!("other")))).await;
            assert!(m.contains("aud"), "{m}");
            let m =
                bad_token(&admin, &api, &with(Some("https://evil.test"), Some(json!("palisade-test")))).await;
            assert!(m.contains("iss"), "{m}");
            let m = bad_token(&admin, &api, &with(None, Some(json!("palisade-test")))).await;
            assert!(m.contains("iss"), "{m}");
            let m = bad_token(&admin, &api, &with(Some("https://issuer.test"), None)).await;
            assert!(m.contains("aud"), "{m}");
        },
    )
    .await
}

// ---- public keys ----

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_verify_against_pem_public_keys() {
    let (rsa, ec, ed, stranger) = (Pair::rsa(), Pair::ec(), Pair::ed(), Pair::ec());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.pem");
    std::fs::write(&file, format!("{}\n{}\n{}", rsa.public_pem, ec.public_pem, ed.public_pem)).unwrap();
    with_public_keys(&file, |api| async move {
        let root = claims("root", json!({"admin": true}));
        let admin = api.with_token(&rsa.token(None, &root));
        admin.set("/a", "1").await;
        for pair in [&rsa, &ec, &ed] {
            let t = pair.token(None, &claims("reader", json!({"read": ["/"]})));
            api.with_token(&t).get("/v1/kv/a").await.ok();
            // The claims are still checked.
            denied(&admin, api.with_token(&t).put("/v1/kv/a", put_body("2"))).await;
            let old = json!({"sub": "r", "exp": now() - 60});
            bad_token(&admin, &api, &pair.token(None, &old)).await;
        }
        // A key the node does not know.
        let m = bad_token(&admin, &api, &stranger.token(None, &root)).await;
        assert!(m.contains("signature"), "{m}");
        // Key confusion: HS256 keyed with the RSA public key's PEM bytes.
        let confused = sign(Algorithm::HS256, &secret_key(rsa.public_pem.as_bytes()), None, &root);
        let m = bad_token(&admin, &api, &confused).await;
        assert!(m.contains("HS256"), "{m}");
        let pem_trimmed = rsa.public_pem.trim().as_bytes().to_vec();
        let confused = sign(Algorithm::HS256, &secret_key(&pem_trimmed), None, &root);
        bad_token(&admin, &api, &confused).await;
        // ES256 claimed over an RSA signature: no key of that family fits.
        let (h, rest) =
            rsa.token(None, &root).split_once('.').map(|(h, r)| (h.to_string(), r.to_string())).unwrap();
        assert!(!h.is_empty());
        let relabelled = format!("{}.{rest}", b64(br#"{"alg":"ES256","typ":"JWT"}"#));
        bad_token(&admin, &api, &relabelled).await;
    })
    .await;
    drop(dir);
}

#[tokio::test]
async fn a_jwks_picks_its_key_by_kid() {
    let (rsa, ec1, ec2, ed) = (Pair::rsa(), Pair::ec(), Pair::ec(), Pair::ed());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[(&rsa, "rsa-1"), (&ec1, "ec-1"), (&ec2, "ec-2"), (&ed, "ed-1")])).unwrap();
    with_public_keys(&file, |api| async move {
        let root = claims("root", json!({"admin": true}));
        let admin = api.with_token(&ec1.token(Some("ec-1"), &root));
        admin.set("/a", "1").await;
        for (pair, kid) in [(&rsa, "rsa-1"), (&ec1, "ec-1"), (&ec2, "ec-2"), (&ed, "ed-1")] {
            let t = pair.token(Some(kid), &claims("reader", json!({"read": ["/"]})));
            api.with_token(&t).get("/v1/kv/a").await.ok();
        }
        // The kid names the one key checked: ec-1's signature under ec-2's kid fails.
        let m = bad_token(&admin, &api, &ec1.token(Some("ec-2"), &root)).await;
        assert!(m.contains("signature"), "{m}");
        // An unknown kid.
        let m = bad_token(&admin, &api, &ec1.token(Some("ec-9"), &root)).await;
        assert!(m.contains("key id"), "{m}");
        // A kid of another family: no key fits.
        bad_token(&admin, &api, &ec1.token(Some("rsa-1"), &root)).await;
        // No kid: keys picked by kid are never tried one after another.
        let m = bad_token(&admin, &api, &ec2.token(None, &root)).await;
        assert!(m.contains("kid"), "{m}");
        // HS256 on a node with public keys only.
        bad_token(&admin, &api, &hs(&root)).await;
    })
    .await;
    drop(dir);
}

#[tokio::test]
async fn a_rewritten_jwks_is_in_force_within_seconds_and_a_broken_one_is_ignored() {
    let (old, new) = (Pair::ec(), Pair::ed());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[(&old, "old")])).unwrap();
    let f = file.clone();
    with_public_keys(&file, |api| async move {
        let root = claims("root", json!({"admin": true}));
        let (old_t, new_t) = (old.token(Some("old"), &root), new.token(Some("new"), &root));
        good_token(&api, &old_t).await;
        let admin_old = api.with_token(&old_t);
        bad_token(&admin_old, &api, &new_t).await;
        // Rotate: the new key in, the old one out.
        std::fs::write(&f, jwks(&[(&new, "new")])).unwrap();
        let started = Instant::now();
        loop {
            if api.with_token(&new_t).get("/v1/cluster").await.status == StatusCode::OK {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "the new key was never taken up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("the new key was in force after {:?}", started.elapsed());
        let admin = api.with_token(&new_t);
        // The old token was verified (and cached) before: it is refused now all the same.
        let m = bad_token(&admin, &api, &old_t).await;
        assert!(m.contains("key id"), "{m}");
        // Broken rewrites keep the keys in force.
        for broken in [
            "{ not json",
            r#"{"keys": []}"#,
            "",
            "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
        ] {
            std::fs::write(&f, broken).unwrap();
            tokio::time::sleep(Duration::from_millis(2500)).await;
            good_token(&api, &new_t).await;
            bad_token(&admin, &api, &old_t).await;
        }
        // And a good rewrite after a broken one is taken up again.
        std::fs::write(&f, jwks(&[(&old, "old"), (&new, "new")])).unwrap();
        let started = Instant::now();
        while api.with_token(&old_t).get("/v1/cluster").await.status != StatusCode::OK {
            assert!(started.elapsed() < Duration::from_secs(10), "the old key never came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        good_token(&api, &new_t).await;
    })
    .await;
    drop(dir);
}

// ---- permissions: keys ----

#[tokio::test]
async fn reads_listings_and_long_polls_need_a_read_prefix_covering_the_key() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            for k in ["/app", "/app/x", "/app/sub/y", "/apple", "/other"] {
                admin.set(k, "v").await;
            }
            let app = api.with_token(&token("app", json!({"read": ["/app/"]})));
            let root = api.with_token(&token("all", json!({"read": ["/"]})));
            // Single keys, on segment boundaries.
            app.get("/v1/kv/app").await.ok();
            app.get("/v1/kv/app/x").await.ok();
            app.get("/v1/kv/app/x?raw").await.expect(StatusCode::OK);
            app.get("/v1/kv/app/nope").await.error(StatusCode::NOT_FOUND, "key_not_found");
            denied(&admin, app.get("/v1/kv/apple")).await;
            denied(&admin, app.get("/v1/kv/other")).await;
            // A missing key outside the grant is 403, not 404 (nothing leaks).
            denied(&admin, app.get("/v1/kv/secret/nope")).await;
            // Listings: the prefix must cover the addressed key itself.
            let l = app.get("/v1/kv/app?recursive").await.ok();
            assert_eq!(l["kvs"].as_array().unwrap().len(), 3, "{l}");
            app.get("/v1/kv/app/sub?recursive").await.ok();
            let err = denied(&admin, app.get("/v1/kv/?recursive")).await;
            assert!(err["message"].as_str().unwrap().contains("app"), "{err}");
            denied(&admin, app.get("/v1/kv/apple?recursive")).await;
            root.get("/v1/kv/?recursive").await.ok();
            app.get("/v1/kv/app?children").await.ok();
            denied(&admin, app.get("/v1/kv/?children")).await;
            root.get("/v1/kv/?children").await.ok();
            let c = app.get("/v1/kv/app?recursive&count_only").await.ok();
            assert_eq!(c["count"], json!(3));
            denied(&admin, app.get("/v1/kv/?recursive&count_only")).await;
            app.get("/v1/kv/app?recursive&revision=1").await.ok();
            denied(&admin, app.get("/v1/kv/?recursive&revision=1")).await;
            // Write does not imply read.
            let writer = api.with_token(&token("w", json!({"write": ["/app/"]})));
            denied(&admin, writer.get("/v1/kv/app/x")).await;
            // Long-polls: allowed ones wait (here: answer at once, the key changed since
            // revision 0); refused ones are refused at once.
            let r = app.get("/v1/kv/app/x?wait&after_revision=0&timeout=2s").await.ok();
            assert_eq!(r["changed"], json!(true), "{r}");
            let started = Instant::now();
            denied(&admin, app.get("/v1/kv/other?wait&timeout=5s")).await;
            denied(&admin, app.get("/v1/kv/?recursive&wait&timeout=5s")).await;
            assert!(started.elapsed() < Duration::from_secs(3), "a refused long-poll waited");
        },
    )
    .await
}

#[tokio::test]
async fn writes_need_write_and_conditional_writes_need_read_too() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            admin.set("/w/a", "1").await;
            admin.set("/rw/a", "1").await;
            admin.set("/d/sub/x", "1").await;
            admin.set("/d/y", "1").await;
            let u =
                api.with_token(&token("u", json!({"read": ["/rw/"], "write": ["/w/", "/rw", "/d/sub/"]})));
            // Plain puts.
            u.put("/v1/kv/w/b", put_body("v")).await.ok();
            u.put("/v1/kv/w", put_body("v")).await.ok();
            denied(&admin, u.put("/v1/kv/wx", put_body("v"))).await;
            denied(&admin, u.put("/v1/kv/other", put_body("v"))).await;
            // A condition or prev_kv reads the key: write alone is not enough.
            denied(&admin, u.put("/v1/kv/w/a?if_version=1", put_body("v"))).await;
            denied(&admin, u.put("/v1/kv/w/a?if_value=1", put_body("v"))).await;
            denied(&admin, u.put("/v1/kv/w/a?if_mod_revision=1", put_body("v"))).await;
            denied(&admin, u.put("/v1/kv/w/a?prev_kv", put_body("v"))).await;
            u.put("/v1/kv/rw/a?if_version=1", put_body("2")).await.ok();
            let r = u.put("/v1/kv/rw/a?prev_kv", put_body("3")).await.ok();
            assert_eq!(r["prev_kv"]["value"], json!("2"));
            // Sequential creates need write on the parent.
            u.post("/v1/kv/w/q?sequential", put_body("v"), &[]).await.expect(StatusCode::CREATED);
            denied(&admin, u.post("/v1/kv/other?sequential", put_body("v"), &[])).await;
            denied(&admin, u.post("/v1/kv/?sequential", put_body("v"), &[])).await;
            // Deletes; a recursive one needs a prefix covering the whole subtree.
            u.delete("/v1/kv/w/b").await.ok();
            denied(&admin, u.delete("/v1/kv/other")).await;
            denied(&admin, u.delete("/v1/kv/w/a?prev_kv")).await;
            denied(&admin, u.delete("/v1/kv/w/a?if_version=1")).await;
            denied(&admin, u.delete("/v1/kv/d?recursive")).await;
            let r = u.delete("/v1/kv/d/sub?recursive").await.ok();
            assert_eq!(r["deleted"], json!(1));
            let r = u.delete("/v1/kv/rw/a?prev_kv").await.ok();
            assert_eq!(r["prev_kvs"][0]["value"], json!("3"));
            admin.get("/v1/kv/d/y").await.ok();
            // Read does not imply write.
            let reader = api.with_token(&token("r", json!({"read": ["/"]})));
            denied(&admin, reader.put("/v1/kv/w/a", put_body("v"))).await;
            denied(&admin, reader.delete("/v1/kv/w/a")).await;
        },
    )
    .await
}

#[tokio::test]
async fn a_txn_is_refused_whole_for_any_op_of_either_branch_or_any_compare() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            admin.set("/app/x", "1").await;
            admin.set("/other", "1").await;
            let u = api.with_token(&token(
                "u",
                json!({"read": ["/app/"], "write": ["/app/"], "locks": ["db-*"]}),
            ));
            let held = admin.post("/v1/locks/db-1", json!({"ttl": "30s"}), &[]).await.ok();
            let fence = held["fencing_token"].as_u64().unwrap();
            let txn = |compare: Value, success: Value, failure: Value| {
                json!({"compare": compare, "success": success, "failure": failure})
            };
            let cmp = json!([{"key": "/app/x", "target": "version", "op": "==", "value": 1}]);
            let ok = txn(
                cmp.clone(),
                json!([{"put": {"key": "/app/y", "value": "v"}}, {"get": {"key": "/app", "recursive": true}}]),
                json!([{"delete": {"key": "/app/x"}}]),
            );
            let r = u.post("/v1/txn", ok, &[]).await.ok();
            assert_eq!(r["succeeded"], json!(true));
            // A denied op in the branch that does not run still refuses the whole txn.
            let bad_failure = txn(
                cmp.clone(),
                json!([{"put": {"key": "/app/z", "value": "v"}}]),
                json!([{"put": {"key": "/other", "value": "v"}}]),
            );
            denied(&admin, u.post("/v1/txn", bad_failure, &[])).await;
            for op in [
                json!({"put": {"key": "/other", "value": "v"}}),
                json!({"delete": {"key": "/other"}}),
                json!({"get": {"key": "/other"}}),
                json!({"get": {"key": "/", "recursive": true}}),
                json!({"get": {"key": "/apple", "recursive": true}}),
            ] {
                let t = txn(cmp.clone(), json!([{"put": {"key": "/app/z", "value": "v"}}, op.clone()]), json!([]));
                denied(&admin, u.post("/v1/txn", t, &[])).await;
                let t = txn(cmp.clone(), json!([]), json!([op]));
                denied(&admin, u.post("/v1/txn", t, &[])).await;
            }
            // A write-only key's prev_kv needs read.
            let w = api.with_token(&token("w", json!({"write": ["/app/"]})));
            let t = txn(json!([]), json!([{"put": {"key": "/app/z", "value": "v", "prev_kv": true}}]), json!([]));
            denied(&admin, w.post("/v1/txn", t, &[])).await;
            let t = txn(json!([]), json!([{"put": {"key": "/app/z", "value": "v"}}]), json!([]));
            w.post("/v1/txn", t, &[]).await.ok();
            // A compare on a key it may not read.
            let t = txn(
                json!([{"key": "/other", "target": "version", "op": "==", "value": 1}]),
                json!([{"put": {"key": "/app/z", "value": "w"}}]),
                json!([]),
            );
            denied(&admin, u.post("/v1/txn", t, &[])).await;
            // Fence compares: a lock (or election) permission on the name.
            let fenced = |name: &str| {
                txn(
                    json!([{"lock": name, "target": "fence", "op": "==", "value": fence}]),
                    json!([{"put": {"key": "/app/fenced", "value": "v"}}]),
                    json!([]),
                )
            };
            let r = u.post("/v1/txn", fenced("db-1"), &[]).await.ok();
            assert_eq!(r["succeeded"], json!(true));
            denied(&admin, u.post("/v1/txn", fenced("cache"), &[])).await;
            let e = api.with_token(&token("e", json!({"write": ["/app/"], "elections": ["db-1"]})));
            e.post("/v1/txn", fenced("db-1"), &[]).await.ok();
            denied(&admin, w.post("/v1/txn", fenced("db-1"), &[])).await;
        },
    )
    .await
}

#[tokio::test]
async fn watches_need_a_read_prefix_covering_the_watched_key() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            admin.set("/app/x", "1").await;
            let app = api.with_token(&token("app", json!({"read": ["/app"]})));
            let all = api.with_token(&token("all", json!({"read": ["/"]})));
            assert_eq!(open(&app, "/v1/watch/app/x").await.0, StatusCode::OK);
            assert_eq!(open(&app, "/v1/watch/app?recursive").await.0, StatusCode::OK);
            assert_eq!(open(&app, "/v1/watch/app/x?start_revision=1").await.0, StatusCode::OK);
            open_denied(&admin, &app, "/v1/watch/apple").await;
            open_denied(&admin, &app, "/v1/watch/other").await;
            open_denied(&admin, &app, "/v1/watch/?recursive").await;
            open_denied(&admin, &app, "/v1/watch?recursive").await;
            assert_eq!(open(&all, "/v1/watch/?recursive").await.0, StatusCode::OK);
            let writer = api.with_token(&token("w", json!({"write": ["/"]})));
            open_denied(&admin, &writer, "/v1/watch/app/x").await;
        },
    )
    .await
}

// ---- permissions: leases, locks, elections, admin ----

#[tokio::test]
async fn leases_belong_to_the_subject_that_granted_them() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            let everything = json!({"read": ["/"], "write": ["/"], "locks": ["*"], "elections": ["*"]});
            let alice = api.with_token(&token("alice", everything.clone()));
            let bob = api.with_token(&token("bob", everything));
            // A lease needs a use: a write, lock or election permission; a token with none
            // (or with read only) may not fill the lease table.
            let nobody = api.with_token(&hs(&json!({"sub": "nobody", "exp": now() + 600})));
            denied(&admin, nobody.post("/v1/leases", json!({"ttl": "30s"}), &[])).await;
            let reader = api.with_token(&token("reader", json!({"read": ["/"]})));
            denied(&admin, reader.post("/v1/leases", json!({"ttl": "30s"}), &[])).await;
            for grants in [json!({"write": ["/x/"]}), json!({"locks": ["l"]}), json!({"elections": ["e"]})] {
                let t = api.with_token(&token("user", grants));
                t.post("/v1/leases", json!({"ttl": "30s"}), &[]).await.expect(StatusCode::CREATED);
            }
            let id =
                alice.post("/v1/leases", json!({"ttl": "30s"}), &[]).await.json()["id"].as_u64().unwrap();
            let bobs =
                bob.post("/v1/leases", json!({"ttl": "30s"}), &[]).await.json()["id"].as_u64().unwrap();
            alice.put("/v1/kv/a", json!({"value": "1", "lease": id})).await.ok();
            let l = alice.get(&format!("/v1/leases/{id}")).await.ok();
            assert_eq!(l["owner"], json!("alice"));
            assert_eq!(l["keys"], json!(["/a"]));
            // bob may not see, keep alive, revoke or use it.
            denied(&admin, bob.get(&format!("/v1/leases/{id}"))).await;
            denied(&admin, bob.post(&format!("/v1/leases/{id}/keepalive"), json!({}), &[])).await;
            denied(&admin, bob.delete(&format!("/v1/leases/{id}"))).await;
            let err = denied(&admin, bob.put("/v1/kv/b", json!({"value": "1", "lease": id}))).await;
            assert!(err["message"].as_str().unwrap().contains(&id.to_string()), "{err}");
            denied(&admin, bob.post("/v1/kv/q?sequential", json!({"value": "1", "lease": id}), &[])).await;
            for branch in ["success", "failure"] {
                let mut t = json!({"compare": [], "success": [], "failure": []});
                t[branch] = json!([{"put": {"key": "/t", "value": "v", "lease": id}}]);
                denied(&admin, bob.post("/v1/txn", t, &[])).await;
            }
            denied(&admin, bob.post("/v1/locks/l", json!({"lease": id, "wait": 0}), &[])).await;
            denied(&admin, bob.post("/v1/elections/e/campaign", json!({"value": "b", "lease": id}), &[]))
                .await;
            assert_eq!(admin.get("/v1/locks/l").await.ok()["holders"], json!([]));
            admin.get("/v1/elections/e").await.error(StatusCode::NOT_FOUND, "no_leader");
            // Still there, still alice's, with its key.
            alice.get(&format!("/v1/leases/{id}")).await.ok();
            alice.post(&format!("/v1/leases/{id}/keepalive"), json!({}), &[]).await.ok();
            alice.put("/v1/kv/b", json!({"value": "1", "lease": id})).await.ok();
            // Each sees only its own in a listing; the admin sees all.
            let ids = |v: Value| -> Vec<u64> {
                v["leases"].as_array().unwrap().iter().map(|l| l["id"].as_u64().unwrap()).collect()
            };
            assert_eq!(ids(alice.get("/v1/leases").await.ok()), vec![id]);
            assert_eq!(ids(bob.get("/v1/leases").await.ok()), vec![bobs]);
            let all = ids(admin.get("/v1/leases").await.ok());
            // alice's, bob's and the three granted by "user" above.
            assert_eq!(all.len(), 5, "{all:?}");
            assert!(all.contains(&id) && all.contains(&bobs));
            // An admin may use any lease, and sees whose it is.
            assert_eq!(admin.get(&format!("/v1/leases/{id}")).await.ok()["owner"], json!("alice"));
            admin.post(&format!("/v1/leases/{id}/keepalive"), json!({}), &[]).await.ok();
            admin.put("/v1/kv/c", json!({"value": "1", "lease": id})).await.ok();
            assert_eq!(admin.get(&format!("/v1/leases/{id}")).await.ok()["owner"], json!("alice"));
            // A lease that does not exist is 404 for anyone.
            bob.get("/v1/leases/999999").await.error(StatusCode::NOT_FOUND, "lease_not_found");
            // alice revokes it: its keys go.
            let r = alice.delete(&format!("/v1/leases/{id}")).await.ok();
            assert_eq!(r["deleted"], json!(3));
            // An admin revokes bob's.
            admin.delete(&format!("/v1/leases/{bobs}")).await.ok();
        },
    )
    .await
}

#[tokio::test]
async fn locks_follow_lock_globs_and_their_owners_leases() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            let alice = api.with_token(&token("alice", json!({"locks": ["db-*"]})));
            let bob = api.with_token(&token("bob", json!({"locks": ["db-*"]})));
            let carol = api.with_token(&token("carol", json!({"locks": ["cache"], "elections": ["db-1"]})));
            let g = alice.post("/v1/locks/db-1", json!({"ttl": "30s"}), &[]).await.ok();
            let (owner, token_) =
                (g["owner"].as_str().unwrap().to_string(), g["fencing_token"].as_u64().unwrap());
            // The lease the acquire made is alice's.
            let lease = g["lease"].as_u64().unwrap();
            assert_eq!(admin.get(&format!("/v1/leases/{lease}")).await.ok()["owner"], json!("alice"));
            denied(&admin, bob.post(&format!("/v1/leases/{lease}/keepalive"), json!({}), &[])).await;
            // Globs.
            denied(&admin, alice.post("/v1/locks/dbx", json!({"ttl": "30s", "wait": 0}), &[])).await;
            denied(&admin, carol.post("/v1/locks/db-2", json!({"ttl": "30s", "wait": 0}), &[])).await;
            carol.post("/v1/locks/cache", json!({"ttl": "30s"}), &[]).await.ok();
            // Reads.
            let info = alice.get("/v1/locks/db-1").await.ok();
            assert_eq!(info["holders"][0]["owner"], json!(owner));
            bob.get("/v1/locks/db-1").await.ok();
            denied(&admin, carol.get("/v1/locks/db-1")).await;
            // Listing: only what each may use.
            let names = |v: Value| -> Vec<String> {
                v["locks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["name"].as_str().unwrap().to_string())
                    .collect()
            };
            assert_eq!(names(alice.get("/v1/locks").await.ok()), vec!["db-1"]);
            assert_eq!(names(carol.get("/v1/locks").await.ok()), vec!["cache"]);
            assert_eq!(names(admin.get("/v1/locks").await.ok()), vec!["cache", "db-1"]);
            // Fence checks: a lock or an election permission on the name.
            alice.post("/v1/fence/check", json!({"name": "db-1", "token": token_}), &[]).await.ok();
            carol.post("/v1/fence/check", json!({"name": "db-1", "token": token_}), &[]).await.ok();
            denied(&admin, carol.post("/v1/fence/check", json!({"name": "db-9", "token": token_}), &[]))
                .await;
            let nobody = api.with_token(&token("n", json!({"read": ["/"]})));
            denied(&admin, nobody.post("/v1/fence/check", json!({"name": "db-1", "token": token_}), &[]))
                .await;
            // Release: bob may use db-*, but alice's owner is under alice's lease.
            denied(&admin, bob.delete(&format!("/v1/locks/db-1?owner={owner}"))).await;
            denied(&admin, carol.delete(&format!("/v1/locks/db-1?owner={owner}"))).await;
            assert_eq!(admin.get("/v1/locks/db-1").await.ok()["holders"][0]["owner"], json!(owner));
            let r = alice.delete(&format!("/v1/locks/db-1?owner={owner}")).await.ok();
            assert_eq!(r["released"], json!(true));
            // An admin releases anyone's.
            let g = bob.post("/v1/locks/db-1", json!({"ttl": "30s"}), &[]).await.ok();
            admin.delete(&format!("/v1/locks/db-1?owner={}", g["owner"].as_str().unwrap())).await.ok();
        },
    )
    .await
}

#[tokio::test]
async fn elections_follow_election_globs_and_their_leaders_leases() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            let alice = api.with_token(&token("alice", json!({"elections": ["leader-*"]})));
            let bob = api.with_token(&token("bob", json!({"elections": ["leader-*"]})));
            let carol = api.with_token(&token("carol", json!({"locks": ["leader-a"]})));
            let c = alice
                .post("/v1/elections/leader-a/campaign", json!({"value": "a", "ttl": "30s"}), &[])
                .await
                .ok();
            let owner = c["owner"].as_str().unwrap().to_string();
            denied(
                &admin,
                carol.post(
                    "/v1/elections/leader-b/campaign",
                    json!({"value": "c", "ttl": "30s", "wait": 0}),
                    &[],
                ),
            )
            .await;
            denied(
                &admin,
                alice.post(
                    "/v1/elections/other/campaign",
                    json!({"value": "c", "ttl": "30s", "wait": 0}),
                    &[],
                ),
            )
            .await;
            // Reads and observing.
            assert_eq!(bob.get("/v1/elections/leader-a").await.ok()["value"], json!("a"));
            denied(&admin, carol.get("/v1/elections/leader-a")).await;
            assert_eq!(open(&bob, "/v1/elections/leader-a/observe").await.0, StatusCode::OK);
            open_denied(&admin, &carol, "/v1/elections/leader-a/observe").await;
            // Proclaim and resign: the leader's lease decides.
            let proclaim = json!({"owner": owner, "value": "b"});
            denied(&admin, bob.put("/v1/elections/leader-a/leader", proclaim.clone())).await;
            denied(&admin, carol.put("/v1/elections/leader-a/leader", proclaim.clone())).await;
            denied(&admin, bob.delete(&format!("/v1/elections/leader-a/leader?owner={owner}"))).await;
            assert_eq!(admin.get("/v1/elections/leader-a").await.ok()["value"], json!("a"));
            let p =
                alice.put("/v1/elections/leader-a/leader", json!({"owner": owner, "value": "a2"})).await.ok();
            assert_eq!(p["value"], json!("a2"));
            admin.put("/v1/elections/leader-a/leader", json!({"owner": owner, "value": "a3"})).await.ok();
            alice.delete(&format!("/v1/elections/leader-a/leader?owner={owner}")).await.ok();
            admin.get("/v1/elections/leader-a").await.error(StatusCode::NOT_FOUND, "no_leader");
        },
    )
    .await
}

#[tokio::test]
async fn compaction_needs_admin_and_the_cluster_status_any_token() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            for i in 0..4 {
                admin.set("/k", &i.to_string()).await;
            }
            let rev = admin.revision().await;
            let almost = api.with_token(&token(
                "almost",
                json!({"read": ["/"], "write": ["/"], "locks": ["*"], "elections": ["*"]}),
            ));
            let err =
                denied(&admin, almost.post("/v1/maintenance/compact", json!({"revision": rev}), &[])).await;
            assert!(err["message"].as_str().unwrap().contains("admin"), "{err}");
            // Full read access still sees history before the compaction.
            almost.get("/v1/kv/k?revision=1").await.ok();
            admin.post("/v1/maintenance/compact", json!({"revision": rev}), &[]).await.ok();
            almost.get("/v1/kv/k?revision=1").await.error(StatusCode::GONE, "compacted");
            // /v1/cluster: any valid token, and it names no secret.
            let nobody = api.with_token(&hs(&json!({"sub": "nobody", "exp": now() + 60})));
            let text = nobody.get("/v1/cluster").await.text();
            assert!(!text.contains(&String::from_utf8_lossy(SECRET).to_string()), "{text}");
        },
    )
    .await
}

#[tokio::test]
async fn a_snapshot_download_needs_admin() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            admin.set("/k", "v").await;
            let r = api.get("/v1/maintenance/snapshot").await;
            r.error(UNAUTHORIZED, "unauthenticated");
            assert_eq!(r.header("www-authenticate"), Some(CHALLENGE));
            let almost = api.with_token(&token(
                "almost",
                json!({"read": ["/"], "write": ["/"], "locks": ["*"], "elections": ["*"]}),
            ));
            let err = denied(&admin, almost.get("/v1/maintenance/snapshot")).await;
            assert!(err["message"].as_str().unwrap().contains("admin"), "{err}");
            let r = admin.get("/v1/maintenance/snapshot").await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.what);
            assert_eq!(r.header("content-type"), Some("application/octet-stream"));
            assert!(r.body.starts_with(b"PALSNAP\0"), "{}", r.what);
        },
    )
    .await
}

#[tokio::test]
async fn a_lock_listing_never_shows_nor_pages_through_hidden_names() {
    with_auth(
        |_| {},
        |api| async move {
            let admin = admin(&api);
            for name in ["a-1", "b-1", "b-2", "c-1"] {
                admin.post(&format!("/v1/locks/{name}"), json!({"ttl": "30s", "wait": "0s"}), &[]).await.ok();
            }
            let some = api.with_token(&token("some", json!({"locks": ["a-*", "c-*"]})));
            // One visible name a page: the hidden ones between are neither listed nor named
            // by `next`.
            let first = some.get("/v1/locks?limit=1").await.ok();
            assert_eq!(first["locks"][0]["name"], json!("a-1"), "{first}");
            assert_eq!(first["next"], json!("a-1"), "{first}");
            let second = some.get("/v1/locks?limit=1&after=a-1").await.ok();
            assert_eq!(second["locks"][0]["name"], json!("c-1"), "{second}");
            assert_eq!(second["more"], json!(false), "{second}");
            let all = some.get("/v1/locks").await.ok();
            assert_eq!(all["count"], json!(2), "{all}");
            assert!(!all.to_string().contains("b-"), "{all}");
            let none = api.with_token(&token("none", json!({"read": ["/"]})));
            let empty = none.get("/v1/locks?limit=1").await.ok();
            assert_eq!(empty, json!({"revision": empty["revision"], "locks": [], "count": 0, "more": false}));
        },
    )
    .await;
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    with_auth(
        |cfg| cfg.auth_jwt_leeway_ms = 0,
        |api| async move {
            let short =
                hs(&json!({"sub": "w", "exp": now() + 2, "palisade": {"read": ["/"], "elections": ["*"]}}));
            let header = format!("Bearer {short}");
            for uri in ["/v1/watch/app?recursive", "/v1/elections/e/observe"] {
                let resp = api.open(uri, &[("authorization", &header)]).await;
                assert_eq!(resp.status(), StatusCode::OK, "{uri}");
                let ended = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    axum::body::to_bytes(resp.into_body(), usize::MAX),
                )
                .await;
                assert!(matches!(ended, Ok(Ok(_))), "{uri}: the stream outlived its token");
            }
            // Past its expiry the token opens nothing.
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            let resp = api.open("/v1/watch/app", &[("authorization", &header)]).await;
            assert_eq!(resp.status(), UNAUTHORIZED);
        },
    )
    .await;
}

#[tokio::test]
async fn idempotency_keys_are_per_subject() {
    with_auth(
        |_| {},
        |api| async move {
            let alice = api.with_token(&token("alice", json!({"read": ["/"], "write": ["/"]})));
            let bob = api.with_token(&token("bob", json!({"read": ["/"], "write": ["/"]})));
            let key = [("idempotency-key", "shared-key-1")];
            let a =
                alice.post("/v1/txn", json!({"success": [{"put": {"key": "/a", "value": "1"}}]}), &key).await;
            a.ok();
            // bob's other request under the same key is applied, not a conflict nor alice's reply.
            let b =
                bob.post("/v1/txn", json!({"success": [{"put": {"key": "/b", "value": "2"}}]}), &key).await;
            b.ok();
            assert!(b.header("idempotent-replayed").is_none());
            assert_eq!(bob.get("/v1/kv/b").await.ok()["kv"]["value"], json!("2"));
            // alice's retry is still a replay of her first.
            let again =
                alice.post("/v1/txn", json!({"success": [{"put": {"key": "/a", "value": "1"}}]}), &key).await;
            again.ok();
            assert_eq!(again.header("idempotent-replayed"), Some("true"));
        },
    )
    .await;
}
