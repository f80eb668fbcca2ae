package schemas

import (
	"slices"
	"strings"
)

// The public API is versioned by date, as Stripe's is: a request may name
// the version it was written for in VersionHeader; without it the API
// key's pinned version applies, else its organization's (the version
// current when the organization was created, which it may change). Every
// answer names the version applied. A change that could break a client
// ships in a new version, and callers pinned to an older one keep the
// old behaviour.

// VersionHeader carries the version a request asks for and, in answers,
// the version applied.
const VersionHeader = "Certnode-Version"

// APIVersion is one dated version of the public API and what changed in it
// (what a client moving to it must expect).
type APIVersion struct {
	Version string   `json:"version"`
	Changes []string `json:"changes"`
}

// The versions with behaviour of their own.
const (
	// APIVersionBaseline is the API as it was before dated versions;
	// organizations created before then are pinned to it.
	APIVersionBaseline = "2026-06-01"
	// APIVersionWhiteLabel adds an organization's receipt metadata to
	// the payloads it signs (ReceiptMetaMember) and its support details
	// to JSON errors.
	APIVersionWhiteLabel = "2026-11-28"
)

// APIVersions is the changelog, oldest first; the last is the current
// version. The README's "API versions" section repeats it.
var APIVersions = []APIVersion{
	{Version: APIVersionBaseline, Changes: []string{
		"The API as it was before dated versions. Organizations created before 2026-11-28 are pinned to it.",
	}},
	{Version: APIVersionWhiteLabel, Changes: []string{
		"Receipts of an organization with receipt metadata (PATCH /v1/orgs/{org}/api-settings, receipt_metadata) carry it in the signed payload's " +
			ReceiptMetaMember + " member; a payload that has a top-level " + ReceiptMetaMember + " member of its own is then refused (400 reserved_member). " +
			"Before this version payloads are signed exactly as sent.",
		"JSON errors to an organization's callers carry its support details (error.support: message, url) when its branding has them.",
	}},
}

// LatestAPIVersion is the current version: new organizations are pinned
// to it.
func LatestAPIVersion() string { return APIVersions[len(APIVersions)-1].Version }

// KnownAPIVersions lists every version, oldest first.
func KnownAPIVersions() []string {
	out := make([]string, len(APIVersions))
	for i, v := range APIVersions {
		out[i] = v.Version
	}
	return out
}

// KnownAPIVersion reports whether v names a version.
func KnownAPIVersion(v string) bool {
	return slices.ContainsFunc(APIVersions, func(a APIVersion) bool { return a.Version == v })
}

// APIVersionAtLeast reports whether version v includes the change made in
// version since. Versions are dates (YYYY-MM-DD), so they order as
// strings; "" is the baseline.
func APIVersionAtLeast(v, since string) bool {
	if v == "" {
		v = APIVersionBaseline
	}
	return strings.Compare(v, since) >= 0
}
