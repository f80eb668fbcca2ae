package ingest

import (
	"fmt"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/internal/tenants"
	"github.com/certnode/certnode/internal/text"
	"github.com/certnode/certnode/schemas"
)

// An organization's API customization, as ingest applies it: its response
// headers on every answer to its requests, the API version each request
// gets (schemas.VersionHeader), the reserved member of its receipt
// metadata, and its keys' defaults (job type, results format).

// OrgAPI gives organizations' API settings (the coordinator's replica).
type OrgAPI interface {
	APISettings(org string) (apicustom.Settings, bool)
}

// versionValue holds the API version applied to a request (string); its
// organization, whose headers apply, is orgValue's.
const versionValue = "certnode.api_version"

// requestedVersion reads the version a request asks for: ok is false when
// it names none that exists (answered 400 here, listing them).
func requestedVersion(ctx *fasthttp.RequestCtx) (string, bool) {
	v := strings.TrimSpace(string(ctx.Request.Header.Peek(schemas.VersionHeader)))
	if v == "" || schemas.KnownAPIVersion(v) {
		return v, true
	}
	known := schemas.KnownAPIVersions()
	writeJSON(ctx, fasthttp.StatusBadRequest, errorBody{Error: errorDetail{"unknown_api_version",
		fmt.Sprintf("%s %q is not an API version; known versions: %s", schemas.VersionHeader, text.Clip(v, 64), strings.Join(known, ", "))},
		KnownVersions: known})
	return "", false
}

// applyVersion fixes the version of the answer: the one asked for, else
// the caller's (its key's pin, else its organization's), else org's, else
// the current one; and the organization whose headers the answer carries.
func (s *Server) applyVersion(ctx *fasthttp.RequestCtx, requested, org string, t *tenants.Tenant) {
	v := requested
	if v == "" && t != nil {
		v = t.APIVersion
	}
	if v == "" && org != "" && s.deps.API != nil {
		if a, ok := s.deps.API.APISettings(org); ok {
			v = a.APIVersion
		}
	}
	if v == "" {
		v = schemas.LatestAPIVersion()
	}
	ctx.SetUserValue(versionValue, v)
	if org != "" {
		ctx.SetUserValue(orgValue, org)
	}
	ctx.Response.Header.Set(schemas.VersionHeader, v)
}

// apiVersion is the version applied to the request.
func apiVersion(ctx *fasthttp.RequestCtx) string {
	v, _ := ctx.UserValue(versionValue).(string)
	return v
}

// atLeast reports whether the request's version includes the change made
// in version: behaviour that could break a client is gated on it.
func atLeast(ctx *fasthttp.RequestCtx, version string) bool {
	v := apiVersion(ctx)
	return v != "" && schemas.APIVersionAtLeast(v, version)
}

// addOrgHeaders adds the organization's response headers to the answer,
// never replacing one the answer has.
func (s *Server) addOrgHeaders(ctx *fasthttp.RequestCtx) {
	org, _ := ctx.UserValue(orgValue).(string)
	if org == "" || s.deps.API == nil {
		return
	}
	a, ok := s.deps.API.APISettings(org)
	if !ok {
		return
	}
	h := &ctx.Response.Header
	for name, value := range a.ResponseHeaders {
		// Checked when set; checked again, so that a state from elsewhere
		// can never frame or weaken an answer.
		if h.Peek(name) == nil && apicustom.CheckHeader(name, value) == nil {
			h.Set(name, value)
		}
	}
}

// reservedMember refuses a payload that has the receipt metadata's member
// while the organization adds metadata to its receipts (from the version
// that does).
func (s *Server) reservedMember(ctx *fasthttp.RequestCtx, t *tenants.Tenant, payload jsontext.Value) error {
	if s.deps.API == nil || !atLeast(ctx, schemas.APIVersionWhiteLabel) {
		return nil
	}
	a, ok := s.deps.API.APISettings(t.ID)
	if !ok || !schemas.Present(a.ReceiptMetadata) {
		return nil
	}
	if has, _ := schemas.HasMember(payload, schemas.ReceiptMetaMember); has {
		return fmt.Errorf("the payload has a top-level %q member: this organization's receipt metadata goes there; rename the member", schemas.ReceiptMetaMember)
	}
	return nil
}

// jobKind is the type of a new job: ?type=, else the key's default.
func jobKind(ctx *fasthttp.RequestCtx, t *tenants.Tenant) schemas.Kind {
	if k := ctx.QueryArgs().Peek("type"); len(k) > 0 {
		return schemas.Kind(k)
	}
	return schemas.Kind(t.Defaults.JobType)
}

// resultFormat is the format of a job's results: ?format=, else the key's
// default, else full; ok is false (answered 400 here) for an unknown one.
func resultFormat(ctx *fasthttp.RequestCtx, t *tenants.Tenant) (compact bool, ok bool) {
	f := string(ctx.QueryArgs().Peek("format"))
	if f == "" {
		f = t.Defaults.ResultFormat
	}
	if err := apicustom.CheckResultFormat(f); err != nil {
		apiError(ctx, fasthttp.StatusBadRequest, "invalid_format", "format must be full or compact")
		return false, false
	}
	return f == apicustom.ResultsCompact, true
}
