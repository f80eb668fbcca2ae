package coordinator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// tlsStream is Raft's stream layer over mutually authenticated TLS.
type tlsStream struct {
	net.Listener
	advertise net.Addr
	dial      *tls.Config
}

func (s *tlsStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}

func (s *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(addr), s.dial)
}

// newTLSTransport is raft.NewTCPTransportWithLogger over TLS: the listener
// asks for a client certificate and checks it with cfg.PeerTLS's roots; a
// dialer presents this member's certificate (cfg.TLS's, renewals
// included).
func newTLSTransport(cfg Config, advertise net.Addr, logger hclog.Logger) (*raft.NetworkTransport, error) {
	if a, ok := advertise.(*net.TCPAddr); ok && a.IP.IsUnspecified() {
		return nil, errors.New("coordinator: --raft: an unspecified address cannot be advertised to the other members")
	}
	dial := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.PeerTLS != nil {
		dial = cfg.PeerTLS.Clone()
	}
	own := cfg.TLS
	dial.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if own.GetCertificate != nil {
			return own.GetCertificate(&tls.ClientHelloInfo{})
		}
		if len(own.Certificates) == 0 {
			return nil, errors.New("coordinator: no certificate for Raft")
		}
		return &own.Certificates[0], nil
	}
	srv := own.Clone()
	srv.ClientAuth, srv.ClientCAs = tls.RequireAndVerifyClientCert, dial.RootCAs
	ln, err := net.Listen("tcp", cfg.RaftAddr)
	if err != nil {
		return nil, fmt.Errorf("coordinator: --raft: %w", err)
	}
	return raft.NewNetworkTransportWithLogger(&tlsStream{Listener: tls.NewListener(ln, srv), advertise: advertise, dial: dial}, 4, 10*time.Second, logger), nil
}
