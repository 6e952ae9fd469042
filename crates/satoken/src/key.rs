//! The service-account signing key: an ECDSA P-256 key (upstream accepts
//! RSA and ECDSA keys), its public half published as a JWK whose key ID is
//! upstream's: the unpadded base64url SHA-256 of the public key's PKIX DER.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{KeyPair, PublicKeyData};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Claims, Error};

pub struct SigningKey {
    pem: String,
    kid: String,
    x: String,
    y: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// A new key, to be kept with `pem()`.
    pub fn generate() -> Result<Self, Error> {
        let pair = KeyPair::generate().map_err(|e| Error::Key(e.to_string()))?;
        Self::from_pem(&pair.serialize_pem())
    }

    /// The key from its PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let pair = KeyPair::from_pem(pem).map_err(|e| Error::Key(e.to_string()))?;
        if pair.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(Error::Key("not an ECDSA P-256 key".into()));
        }
        // An uncompressed point: 0x04, then x and y of 32 bytes each.
        let point = pair.public_key_raw();
        if point.len() != 65 {
            return Err(Error::Key("malformed public key".into()));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..]);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(pair.subject_public_key_info()));
        Ok(Self {
            pem: pem.to_owned(),
            encoding: EncodingKey::from_ec_pem(pem.as_bytes())?,
            decoding: DecodingKey::from_ec_components(&x, &y)?,
            kid,
            x,
            y,
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The JSON Web Key Set `/openid/v1/jwks` serves.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": "ES256",
            "x": self.x,
            "y": self.y,
        }]})
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// The claims of a token this key signed. Expiry, audiences and issuer
    /// are left to `Claims::subject`, as legacy tokens have none of the first two.
    pub fn claims(&self, token: &str) -> Result<Claims, Error> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| Error::Invalid(e.to_string()))
    }
}
