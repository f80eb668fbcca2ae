package mail

import (
	"bufio"
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"net/mail"
	"net/textproto"
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

// overSigned are the headers a forger would add or change: a signature
// lists each once more than the message has it (RFC 6376 §8.15, over-
// signing), so one more, prepended in transit, breaks it. The others
// signed are listed once.
var (
	overSigned    = []string{"From", "To", "Subject", "Date", "Message-ID", "Reply-To"}
	signedHeaders = []string{"MIME-Version", "Content-Type", "Auto-Submitted"}
)

// headerKeys is what a signature of raw lists (h=).
func headerKeys(raw []byte) ([]string, error) {
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw))).ReadMIMEHeader()
	if err != nil {
		return nil, fmt.Errorf("dkim: the message's header: %w", err)
	}
	var keys []string
	for _, k := range overSigned {
		for range len(h.Values(k)) + 1 {
			keys = append(keys, k)
		}
	}
	return append(keys, signedHeaders...), nil
}

// Sign adds a DKIM-Signature header to raw (relaxed/relaxed, SHA-256).
func Sign(raw []byte, k DKIMKey) ([]byte, error) {
	if k.Signer == nil || k.Domain == "" || k.Selector == "" {
		return nil, errors.New("dkim: a key needs a domain, a selector and a signer")
	}
	keys, err := headerKeys(raw)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	err = dkim.Sign(&out, bytes.NewReader(raw), &dkim.SignOptions{Domain: k.Domain, Selector: k.Selector, Signer: k.Signer,
		Hash: crypto.SHA256, HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: keys})
	if err != nil {
		return nil, fmt.Errorf("dkim sign (d=%s s=%s): %w", k.Domain, k.Selector, err)
	}
	return out.Bytes(), nil
}
