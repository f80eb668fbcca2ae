// Package schemas owns the CertNode wire formats: RFC 8785 canonical JSON,
// the v1 receipt, JWK/JWKS with RFC 7638 key ids, and receipt verification.
// It has no dependencies on other CertNode packages, so every tier and every
// external tool can share one definition of what a valid receipt is.
package schemas
