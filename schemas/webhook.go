package schemas

// Webhook event types an endpoint can subscribe to.
const (
	EventReceiptSigned             = "receipt.signed"
	EventReceiptVerified           = "receipt.verified"
	EventReceiptVerificationFailed = "receipt.verification_failed"
	EventJobCompleted              = "job.completed"
	EventQuotaWarning              = "quota.warning"
	EventEndpointDisabled          = "endpoint.disabled"
	EventWebhookTest               = "webhook.test"
)

// EventTypes lists every webhook event type.
var EventTypes = []string{EventReceiptSigned, EventReceiptVerified, EventReceiptVerificationFailed,
	EventJobCompleted, EventQuotaWarning, EventEndpointDisabled, EventWebhookTest}
