package schemas

import "time"

// ComplianceReportType names the payload of a signed compliance report.
const ComplianceReportType = "certnode.compliance_report"

// ComplianceReport is what an organization shows an auditor for a period.
// It is the payload of a CertNode receipt the service signs, so anyone
// with the service's JWKS can check it was not altered (certnode verify).
type ComplianceReport struct {
	Type         string    `json:"type"` // ComplianceReportType
	Version      int       `json:"version"`
	Organization string    `json:"organization"`
	From         time.Time `json:"from"`
	To           time.Time `json:"to"`
	GeneratedAt  time.Time `json:"generated_at"`
	GeneratedBy  string    `json:"generated_by"` // the API key or user who asked
	// ReceiptsByKid counts the receipts signed per signing key; more than
	// one kid in a period is a key rotation.
	ReceiptsByKid []ComplianceCount `json:"receipts_by_kid"`
	// SigningKeys are the kids the service publishes now.
	SigningKeys          []string          `json:"signing_keys"`
	VerificationFailures []ComplianceCount `json:"verification_failures_by_reason"`
	Requests             AnalyticsSummary  `json:"requests"`
	// SuccessRatio is the share of requests not failed: what the service
	// processed as asked (invalid receipts were processed correctly).
	SuccessRatio float64 `json:"success_ratio"`
	// Users, APIKeys and AuditEvents are as the coordinator holds them;
	// AuditEvents are those of the period, newest first, at most
	// MaxComplianceEvents (AuditEventsOmitted says how many more).
	Users              []jsonObject `json:"users"`
	APIKeys            []jsonObject `json:"api_keys"`
	AuditEvents        []jsonObject `json:"audit_events"`
	AuditEventsOmitted int          `json:"audit_events_omitted"`
}

// jsonObject is a member, key or event as the coordinator's API answers
// it: the report keeps it whole.
type jsonObject = map[string]any

// ComplianceCount is a count of one value of a dimension.
type ComplianceCount struct {
	Value string `json:"value"`
	Count uint64 `json:"count"`
}

// MaxComplianceEvents bounds the audit events one report lists.
const MaxComplianceEvents = 1000

// EvidenceBundleType names a SOC 2 evidence bundle's payload.
const EvidenceBundleType = "certnode.soc2-evidence"

// EvidenceBundle is the evidence of a deployment's controls over a period,
// signed as a CertNode receipt whose payload it is (certnode compliance
// evidence). Lists hold what the coordinator and ClickHouse answered,
// whole; a list cut short says so in Omitted, a source not reached is in
// Missing. Software supplies controls and evidence, not certification.
type EvidenceBundle struct {
	Type        string    `json:"type"`
	Version     int       `json:"version"`
	Period      string    `json:"period"`
	From        time.Time `json:"from"`
	To          time.Time `json:"to"`
	GeneratedAt time.Time `json:"generated_at"`
	// AccessReview: every organization, user (with roles) and API and
	// producer key (scopes, expiry, revocation, last use) as of now.
	AccessReview EvidenceAccess `json:"access_review"`
	// ChangeHistory: the coordinator's applied changes of the period
	// (audit events), oldest first.
	ChangeHistory []jsonObject `json:"change_history"`
	// KeyRotations: the signing keys of the key ring, with when each was
	// created and retired.
	KeyRotations []EvidenceKey `json:"key_rotations"`
	// Erasures: the erasures of the period (audit events erasure.*).
	Erasures []jsonObject `json:"erasures"`
	// SecurityEvents: the threat detectors' alerts of the period, and the
	// addresses blocked now.
	SecurityEvents []jsonObject `json:"security_events"`
	Blocks         []jsonObject `json:"blocks"`
	// Availability: each organization's requests, failures, success ratio
	// and latency over the period.
	Availability []EvidenceAvailability `json:"availability"`
	// Checkpoints: the latest signed checkpoints of the transparency log
	// and of the audit log, which later evidence must be consistent with.
	Checkpoints map[string]string `json:"checkpoints"`
	Omitted     map[string]int    `json:"omitted"`
	Missing     []string          `json:"missing"`
}

// EvidenceAccess is the access review.
type EvidenceAccess struct {
	Organizations []jsonObject `json:"organizations"`
	Users         []jsonObject `json:"users"`
	APIKeys       []jsonObject `json:"api_keys"`
	ProducerKeys  []jsonObject `json:"producer_keys"`
}

// EvidenceKey is a signing key of the ring.
type EvidenceKey struct {
	Kid       string    `json:"kid"`
	Alg       string    `json:"alg"`
	State     string    `json:"state"`
	Source    string    `json:"source"`
	CreatedAt time.Time `json:"created_at"`
	RetiredAt time.Time `json:"retired_at,omitzero"`
}

// EvidenceAvailability is one organization's service over the period.
type EvidenceAvailability struct {
	Org           string      `json:"org"`
	Requests      uint64      `json:"requests"`
	Failed        uint64      `json:"failed"`
	SuccessRatio  float64     `json:"success_ratio"`
	LatencyMillis Percentiles `json:"latency_ms"`
}
