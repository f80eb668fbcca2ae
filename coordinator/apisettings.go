package coordinator

import (
	"fmt"
	"net/http"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/certnode/certnode/internal/apicustom"
	"github.com/certnode/certnode/schemas"
)

// An organization's API customization (internal/apicustom) lives in its
// Org (API) and each API key's defaults in the key (Defaults); the
// commands below change them, and the replica hands them to the tiers
// that apply them: ingest (headers, versions, key defaults), workers
// (receipt metadata) and dispatchers (receipts in webhook events).

const (
	cmdSetAPISettings cmdType = 70
	cmdSetKeyDefaults cmdType = 71
)

// checkAPI checks an organization's API settings as a command error.
func checkAPI(s *apicustom.Settings) error {
	if err := s.Check(); err != nil {
		return invalid("api settings: %v", err)
	}
	return nil
}

// SetAPISettings replaces an organization's API settings.
type SetAPISettings struct {
	Meta     `json:"meta,omitzero"`
	Org      string             `json:"org"`
	Settings apicustom.Settings `json:"settings"`
	At       time.Time          `json:"at"`
}

func (*SetAPISettings) cmdType() cmdType { return cmdSetAPISettings }
func (c *SetAPISettings) validate(s *State) error {
	if _, ok := s.Orgs[c.Org]; !ok {
		return fmt.Errorf("%w: organization %q", ErrNotFound, c.Org)
	}
	if c.At.IsZero() {
		return invalid("at is required")
	}
	return checkAPI(&c.Settings)
}
func (c *SetAPISettings) apply(s *State) {
	o := *s.Orgs[c.Org] // copy: readers may hold the old value
	o.API, o.UpdatedAt = c.Settings, c.At
	s.Orgs[c.Org] = &o
}
func (c *SetAPISettings) audit() (string, string, string) { return "org.api_settings", c.Org, c.Org }

// SetKeyDefaults replaces an API key's defaults.
type SetKeyDefaults struct {
	Meta     `json:"meta,omitzero"`
	Org      string                `json:"org"`
	Key      string                `json:"key"`
	Defaults apicustom.KeyDefaults `json:"defaults"`
}

func (*SetKeyDefaults) cmdType() cmdType { return cmdSetKeyDefaults }
func (c *SetKeyDefaults) validate(s *State) error {
	k, err := s.orgKey(c.Org, c.Key)
	if err != nil {
		return err
	}
	if !k.RevokedAt.IsZero() {
		return fmt.Errorf("%w: key %q is revoked", ErrConflict, c.Key)
	}
	if err := c.Defaults.Check(); err != nil {
		return invalid("defaults: %v", err)
	}
	return nil
}
func (c *SetKeyDefaults) apply(s *State) {
	k := *s.Keys[c.Key]
	k.Defaults = c.Defaults
	s.Keys[c.Key] = &k
}
func (c *SetKeyDefaults) audit() (string, string, string) { return "api_key.defaults", c.Org, c.Key }

// apiSettingsView is GET /v1/orgs/{org}/api-settings: the settings, with
// the versions there are to pin.
type apiSettingsView struct {
	apicustom.Settings `json:",inline"`
	// APIVersion is always shown: the baseline for an organization
	// created before dated versions.
	APIVersion      string               `json:"api_version"`
	ResponseHeaders map[string]string    `json:"response_headers"` // {} when none
	LatestVersion   string               `json:"latest_version"`
	Versions        []schemas.APIVersion `json:"versions"`
}

func apiSettingsViewOf(s apicustom.Settings) apiSettingsView {
	v := apiSettingsView{Settings: s, APIVersion: s.APIVersion, ResponseHeaders: s.ResponseHeaders, LatestVersion: schemas.LatestAPIVersion(), Versions: schemas.APIVersions}
	if v.APIVersion == "" {
		v.APIVersion = schemas.APIVersionBaseline
	}
	v.Settings.APIVersion, v.Settings.ResponseHeaders = "", nil
	if v.ResponseHeaders == nil {
		v.ResponseHeaders = map[string]string{}
	}
	if v.WebhookReceipt == "" {
		v.WebhookReceipt = apicustom.ReceiptInclude
	}
	return v
}

func (s *Server) getAPISettings(w http.ResponseWriter, _ *http.Request, sc scope, _ []byte) {
	o, _ := s.org(sc.org)
	writeJSON(w, http.StatusOK, apiSettingsViewOf(o.API))
}

// patchAPISettings changes some of an organization's API settings:
// absent members keep their value; response_headers replaces the set
// ({} clears it), receipt_metadata null removes the metadata.
func (s *Server) patchAPISettings(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		ResponseHeaders *map[string]string `json:"response_headers"`
		WebhookReceipt  *string            `json:"webhook_receipt"`
		ReceiptMetadata jsontext.Value     `json:"receipt_metadata"`
		APIVersion      *string            `json:"api_version"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	o, _ := s.org(sc.org)
	next := o.API
	if b.ResponseHeaders != nil {
		next.ResponseHeaders = *b.ResponseHeaders
		if len(next.ResponseHeaders) == 0 {
			next.ResponseHeaders = nil
		}
	}
	if b.WebhookReceipt != nil {
		next.WebhookReceipt = *b.WebhookReceipt
	}
	if len(b.ReceiptMetadata) > 0 {
		meta, err := apicustom.NormalizeMetadata(b.ReceiptMetadata)
		if err != nil {
			s.fail(w, invalid("%v", err))
			return
		}
		next.ReceiptMetadata = meta
	}
	if b.APIVersion != nil {
		if *b.APIVersion == "" {
			s.fail(w, invalid("api_version: want one of %v", schemas.KnownAPIVersions()))
			return
		}
		next.APIVersion = *b.APIVersion
	}
	if err := checkAPI(&next); err != nil {
		s.fail(w, err)
		return
	}
	s.write(w, r, body, &SetAPISettings{Org: sc.org, Settings: next, At: time.Now().UTC()}, http.StatusOK, apiSettingsViewOf(next))
}

// patchKey changes an API key's defaults (PATCH /v1/orgs/{org}/keys/{key}).
func (s *Server) patchKey(w http.ResponseWriter, r *http.Request, sc scope, body []byte) {
	var b struct {
		Defaults *apicustom.KeyDefaults `json:"defaults"`
	}
	if err := decodeBody(body, &b); err != nil {
		s.fail(w, err)
		return
	}
	if b.Defaults == nil {
		s.fail(w, invalid("defaults is required"))
		return
	}
	k, ok := owned(s, sc, keysOf, r.PathValue("key"))
	if !ok {
		s.fail(w, fmt.Errorf("%w: key %q", ErrNotFound, r.PathValue("key")))
		return
	}
	c := &SetKeyDefaults{Org: sc.org, Key: k.ID, Defaults: *b.Defaults}
	var err error
	s.node.fsm.View(func(st *State) { err = c.validate(st) })
	if err != nil {
		s.fail(w, err)
		return
	}
	k.Defaults = c.Defaults
	s.write(w, r, body, c, http.StatusOK, viewOf(&k))
}

// checkKeyDefaults checks a key's defaults as a command error.
func checkKeyDefaults(d *apicustom.KeyDefaults) error {
	if err := d.Check(); err != nil {
		return invalid("defaults: %v", err)
	}
	return nil
}

// replicaAPI is what the replica keeps of an organization's settings.
func replicaAPI(o *Org) *apicustom.Settings {
	a := o.API
	if a.APIVersion == "" {
		a.APIVersion = schemas.APIVersionBaseline
	}
	return &a
}

// keyVersion is the version a key's requests get without asking: the
// key's pin, else its organization's.
func keyVersion(k *APIKey, org *apicustom.Settings) string {
	if k.Defaults.APIVersion != "" {
		return k.Defaults.APIVersion
	}
	return org.APIVersion
}

// APISettings are an organization's API settings, with its pinned
// version filled in; ok is false for an unknown organization. A stale copy
// still answers, as for keys: settings do not expire.
func (r *Replica) APISettings(org string) (apicustom.Settings, bool) {
	st := r.state.Load()
	if st == nil || st.api[org] == nil {
		return apicustom.Settings{}, false
	}
	return *st.api[org], true
}
