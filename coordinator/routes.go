package coordinator

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// route is one API route. Org routes are the ones an organization's own
// users and keys reach; the cross-tenant test walks every one of them.
type route struct {
	pattern string
	h       http.Handler
	org     bool
}

// routes lists the API. Organization resources are served under
// /v1/orgs/{org} to the operator, the organization's users (by role) and
// its admin-scope keys; the operator's CLI also reaches keys and producer
// keys under /v1/admin/orgs/{org}.
func (s *Server) routes() []route {
	op := s.authed(ActorOperator)
	node := s.authed(ActorNode)
	user := s.authed(ActorUser)
	caller := s.authed(ActorOperator, ActorUser, ActorKey)
	rs := []route{
		{pattern: "GET /v1/admin/cluster", h: op(s.cluster)},
		{pattern: "POST /v1/admin/cluster/members", h: op(s.leader(s.addMember))},
		{pattern: "DELETE /v1/admin/cluster/members/{id}", h: op(s.leader(s.removeMember))},
		{pattern: "POST /v1/admin/orgs", h: op(s.leader(s.createOrg))},
		{pattern: "GET /v1/admin/orgs", h: op(s.listOrgs)},
		{pattern: "GET /v1/admin/orgs/{org}", h: op(s.consistent(s.getOrg))},
		{pattern: "PATCH /v1/admin/orgs/{org}", h: op(s.leader(s.updateOrg))},
		{pattern: "GET /v1/admin/plans", h: op(s.listPlans)},
		{pattern: "PUT /v1/admin/plans/{plan}", h: op(s.leader(s.putPlan))},
		{pattern: "POST /v1/admin/users", h: op(s.leader(s.createUser))},
		{pattern: "GET /v1/admin/users", h: op(s.listUsers)},
		{pattern: "POST /v1/admin/users/{user}/password-reset", h: op(s.leader(s.issueReset))},
		{pattern: "GET /v1/admin/audit", h: op(s.adminAudit)},
		{pattern: "POST /v1/admin/blocks", h: op(s.leader(s.block))},
		{pattern: "GET /v1/admin/blocks", h: op(s.listBlocks)},
		{pattern: "DELETE /v1/admin/blocks/{addr}", h: op(s.leader(s.unblock))},
		{pattern: "POST /v1/node/blocks", h: node(s.leader(s.block))},
		{pattern: "GET /v1/node/state", h: node(s.state)},
		{pattern: "GET /metrics", h: promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})},
		{pattern: "POST /v1/node/leases", h: node(s.leader(s.leases.serve))},
		{pattern: "POST /v1/node/webhooks/endpoints/{id}/health", h: node(s.leader(s.endpointHealth))},
		{pattern: "POST /v1/node/quota-alerts/{org}", h: node(s.leader(s.announceQuota))},
		{pattern: "POST /v1/node/reports/{id}/announce", h: node(s.leader(s.announceReport))},
		{pattern: "POST /v1/node/domains/{name}/state", h: node(s.leader(s.reportDomain))},
		{pattern: "GET /v1/node/certs/{op}", h: node(s.leader(s.certStore))},
		{pattern: "PUT /v1/node/certs/{op}", h: node(s.leader(s.certStore))},
		{pattern: "POST /v1/node/certs/{op}", h: node(s.leader(s.certStore))},
		{pattern: "DELETE /v1/node/certs/{op}", h: node(s.leader(s.certStore))},
		// The mailer's side of the outbox (emailhttp.go).
		{pattern: "GET /v1/node/email/keys", h: node(s.keyRequests)},
		{pattern: "PUT /v1/node/email/domains/{org}/{domain}/key", h: node(s.leader(s.putDomainKey))},
		{pattern: "POST /v1/node/email/claim", h: node(s.leader(s.claimEmail))},
		{pattern: "POST /v1/node/email/messages/{id}/outcome", h: node(s.leader(s.recordEmail))},
		{pattern: "POST /v1/node/email/events", h: node(s.leader(s.queueEventEmail))},
		{pattern: "POST /v1/node/orgs/{org}/signing-keys", h: node(s.leader(s.installOrgKey))},

		{pattern: "POST /v1/auth/login", h: s.anonymous(s.leader(s.login))},
		{pattern: "POST /v1/auth/logout", h: user(s.leader(s.logout))},
		{pattern: "GET /v1/me", h: user(s.me)},
		{pattern: "POST /v1/auth/invitations/accept", h: s.anonymous(s.leader(s.acceptInvitation))},
		{pattern: "POST /v1/auth/password-reset", h: s.anonymous(s.leader(s.resetPassword))},
		{pattern: "POST /v1/auth/password-reset/request", h: s.anonymous(s.leader(s.requestReset))},
	}
	orgRoutes := []struct {
		method, path string
		h            handler
		alias        bool // also under /v1/admin/orgs/{org}, for the CLI
	}{
		{"GET", "", s.inOrg(permOrgRead, s.orgView), false},
		{"PATCH", "", s.leader(s.inOrg(permOrgWrite, s.updateOrgSettings)), false},
		{"GET", "/members", s.inOrg(permMembersRead, s.listMembers), false},
		{"PUT", "/members/{user}", s.leader(s.inOrg(permMembersWrite, s.putMember)), false},
		{"DELETE", "/members/{user}", s.leader(s.inOrg(permMembersWrite, s.removeOrgMember)), false},
		{"POST", "/invitations", s.leader(s.inOrg(permMembersWrite, s.invite)), false},
		{"GET", "/invitations", s.inOrg(permMembersWrite, s.listInvitations), false},
		{"DELETE", "/invitations/{id}", s.leader(s.inOrg(permMembersWrite, s.revokeInvitation)), false},
		{"POST", "/keys", s.leader(s.inOrg(permKeysWrite, s.createKey)), true},
		{"GET", "/keys", s.consistent(s.inOrg(permKeysRead, s.listKeys)), true},
		{"DELETE", "/keys/{key}", s.leader(s.inOrg(permKeysWrite, s.revokeKey)), true},
		{"POST", "/keys/{key}/suspend", s.leader(s.inOrg(permKeysWrite, s.suspendKey(false))), true},
		{"POST", "/keys/{key}/resume", s.leader(s.inOrg(permKeysWrite, s.suspendKey(true))), true},
		{"POST", "/producer-keys", s.leader(s.inOrg(permProducerKeysWrite, s.createProducerKey)), true},
		{"GET", "/producer-keys", s.consistent(s.inOrg(permProducerKeysRead, s.listProducerKeys)), true},
		{"POST", "/producer-keys/{key}/rotate", s.leader(s.inOrg(permProducerKeysWrite, s.rotateProducerKey)), true},
		{"DELETE", "/producer-keys/{key}", s.leader(s.inOrg(permProducerKeysWrite, s.revokeProducerKey)), true},
		{"GET", "/audit", s.inOrg(permAuditRead, s.orgAudit), false},
		{"POST", "/webhooks/endpoints", s.leader(s.inOrg(permWebhooksWrite, s.createEndpoint)), false},
		{"GET", "/webhooks/endpoints", s.inOrg(permWebhooksRead, s.listEndpoints), false},
		{"GET", "/webhooks/endpoints/{id}", s.inOrg(permWebhooksRead, s.getEndpoint), false},
		{"PATCH", "/webhooks/endpoints/{id}", s.leader(s.inOrg(permWebhooksWrite, s.updateEndpoint)), false},
		{"DELETE", "/webhooks/endpoints/{id}", s.leader(s.inOrg(permWebhooksWrite, s.deleteEndpoint)), false},
		{"POST", "/webhooks/endpoints/{id}/rotate-secret", s.leader(s.inOrg(permWebhooksWrite, s.rotateEndpointSecret)), false},
		{"POST", "/webhooks/endpoints/{id}/test", s.inOrg(permWebhooksWrite, s.testEndpoint), false},
		{"POST", "/reports", s.leader(s.inOrg(permReportsWrite, s.createReport)), false},
		{"GET", "/reports", s.inOrg(permReportsRead, s.listReports), false},
		{"GET", "/reports/{id}", s.inOrg(permReportsRead, s.getReport), false},
		{"PATCH", "/reports/{id}", s.leader(s.inOrg(permReportsWrite, s.updateReport)), false},
		{"DELETE", "/reports/{id}", s.leader(s.inOrg(permReportsWrite, s.deleteReport)), false},
		{"POST", "/domains", s.leader(s.inOrg(permDomainsWrite, s.addDomain)), false},
		{"GET", "/domains", s.inOrg(permDomainsRead, s.listDomains), false},
		{"GET", "/domains/{name}", s.inOrg(permDomainsRead, s.getDomain), false},
		{"DELETE", "/domains/{name}", s.leader(s.inOrg(permDomainsWrite, s.deleteDomain)), false},
		{"POST", "/domains/{name}/verify", s.leader(s.inOrg(permDomainsWrite, s.verifyDomain)), false},
		// Email (emailhttp.go).
		{"POST", "/email/templates/{template}/preview", s.inOrg(permOrgRead, s.previewEmail), false},
		{"GET", "/email/messages", s.inOrg(permAuditRead, s.listEmails), false},
		{"POST", "/email/domains", s.leader(s.inOrg(permOrgWrite, s.createSendingDomain)), false},
		{"GET", "/email/domains", s.inOrg(permOrgRead, s.listSendingDomains), false},
		{"GET", "/email/domains/{domain}", s.inOrg(permOrgRead, s.getSendingDomain), false},
		{"POST", "/email/domains/{domain}/verify", s.leader(s.inOrg(permOrgWrite, s.verifySendingDomain)), false},
		{"DELETE", "/email/domains/{domain}", s.leader(s.inOrg(permOrgWrite, s.deleteSendingDomain)), false},
		{"GET", "/signing-keys", s.consistent(s.inOrg(permSigningKeysRead, s.getSigningKeys)), false},
		{"PUT", "/signing-keys/settings", s.leader(s.inOrg(permSigningKeysWrite, s.putSigningKeySettings)), false},
		{"POST", "/signing-keys/rotate", s.leader(s.inOrg(permSigningKeysWrite, s.rotateSigningKey)), false},
		{"GET", "/jwks", s.consistent(s.inOrg(permSigningKeysRead, s.orgJWKS)), false},
		{"GET", "/branding", s.inOrg(permOrgRead, s.getBranding), false},
		{"PUT", "/branding", s.leader(s.inOrg(permOrgWrite, s.putBranding)), false},
		{"PUT", "/maintenance", s.leader(s.inOrg(permOrgWrite, s.putMaintenance)), true},
		{"DELETE", "/maintenance", s.leader(s.inOrg(permOrgWrite, s.endMaintenance)), true},
		// API customization (apisettings.go).
		{"GET", "/api-settings", s.inOrg(permOrgRead, s.getAPISettings), false},
		{"PATCH", "/api-settings", s.leader(s.inOrg(permOrgWrite, s.patchAPISettings)), false},
		{"PATCH", "/keys/{key}", s.leader(s.inOrg(permKeysWrite, s.patchKey)), true},
	}
	for _, o := range orgRoutes {
		rs = append(rs, route{pattern: o.method + " /v1/orgs/{org}" + o.path, h: caller(o.h), org: true})
		if o.alias {
			rs = append(rs, route{pattern: o.method + " /v1/admin/orgs/{org}" + o.path, h: op(o.h)})
		}
	}
	return rs
}
