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
