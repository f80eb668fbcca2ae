package mail

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"net/mail"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	gomail "github.com/wneessen/go-mail"
)

// Message is one email to one recipient.
type Message struct {
	ID       string // unique: the Message-ID's local part
	From     mail.Address
	To       string
	ReplyTo  string // the organization's support address, if any
	Rendered Rendered
	Date     time.Time
}

// Build writes m as an RFC 5322 message: multipart/alternative with the
// plain-text part first and the HTML part last (the one clients prefer),
// each quoted-printable.
func (m *Message) Build() ([]byte, error) {
	msg := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	if err := msg.FromFormat(m.From.Name, m.From.Address); err != nil {
		return nil, fmt.Errorf("from %q: %w", m.From.Address, err)
	}
	if err := msg.To(m.To); err != nil {
		return nil, fmt.Errorf("to %q: %w", m.To, err)
	}
	if m.ReplyTo != "" {
		if err := msg.ReplyTo(m.ReplyTo); err != nil {
			return nil, fmt.Errorf("reply-to %q: %w", m.ReplyTo, err)
		}
	}
	msg.Subject(m.Rendered.Subject)
	msg.SetMessageIDWithValue(m.ID + "@" + domainOf(m.From.Address))
	msg.SetDateWithValue(m.Date)
	msg.SetGenHeader(gomail.Header("Auto-Submitted"), "auto-generated")
	msg.SetBodyString(gomail.TypeTextPlain, m.Rendered.Text, gomail.WithPartEncoding(gomail.EncodingQP))
	msg.AddAlternativeString(gomail.TypeTextHTML, m.Rendered.HTML, gomail.WithPartEncoding(gomail.EncodingQP))
	var buf bytes.Buffer
	if _, err := msg.WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// domainOf is the domain of an address ("" when it has none).
func domainOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == '@' {
			return addr[i+1:]
		}
	}
	return ""
}

// DKIMKey is what signs a domain's mail: the domain (d=), the selector
// (s=) and the private key, which may be an HSM's.
type DKIMKey struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// signedHeaders are the headers a signature covers. From is required; the
// others are what a forger would change. Each is listed once more than it
// appears (RFC 6376 §5.4.2 "over-signing" happens by listing absent ones),
// so a header added in transit breaks the signature.
var signedHeaders = []string{"From", "To", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version", "Content-Type", "Auto-Submitted"}

// Sign adds a DKIM-Signature header to raw (relaxed/relaxed, SHA-256).
func Sign(raw []byte, k DKIMKey) ([]byte, error) {
	if k.Signer == nil || k.Domain == "" || k.Selector == "" {
		return nil, errors.New("dkim: a key needs a domain, a selector and a signer")
	}
	var out bytes.Buffer
	err := dkim.Sign(&out, bytes.NewReader(raw), &dkim.SignOptions{Domain: k.Domain, Selector: k.Selector, Signer: k.Signer,
		Hash: crypto.SHA256, HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: signedHeaders})
	if err != nil {
		return nil, fmt.Errorf("dkim sign (d=%s s=%s): %w", k.Domain, k.Selector, err)
	}
	return out.Bytes(), nil
}
