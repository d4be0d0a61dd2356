package fault

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
)

// pki is a throwaway CA with a server and a client certificate.
type pki struct {
	roots      *x509.CertPool
	server     tls.Certificate
	client     tls.Certificate
	serverName string
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "stalk test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, dns []string) tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			DNSNames:     dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		require.NoError(t, err)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	p := &pki{roots: x509.NewCertPool(), serverName: "broker.stalk.test"}
	p.roots.AddCert(ca)
	p.server = issue(2, p.serverName, x509.ExtKeyUsageServerAuth, []string{p.serverName})
	p.client = issue(3, "stalk client", x509.ExtKeyUsageClientAuth, nil)
	return p
}

// TestFaultTLS talks amqps:// through a TLS-terminating proxy that requires
// a client certificate from the test's CA, with server-name checking.
func TestFaultTLS(t *testing.T) {
	p := newPKI(t)
	px := startProxy(t, &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.roots,
		MinVersion:   tls.VersionTLS12,
	})
	u := px.URL("amqps")

	t.Run("ok", func(t *testing.T) {
		for _, mode := range modes {
			c := dialURL(t, u, harness.Name("tls", mode.String()), amqp.WithReplyMode(mode), amqp.WithTLS(&tls.Config{
				RootCAs:      p.roots,
				Certificates: []tls.Certificate{p.client},
				ServerName:   p.serverName,
				MinVersion:   tls.VersionTLS12,
			}))
			ctx := harness.Ctx(t, 30*time.Second)
			r, err := c.Send(ctx, "tasks.add", amqp.Args(40, 2))
			require.NoError(t, err)
			v, err := r.Get(ctx)
			require.NoError(t, err)
			assert.Equal(t, int64(42), v, mode.String())
		}
	})

	dialErr := func(t *testing.T, cfg *tls.Config) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		c, err := amqp.Dial(ctx, u, amqp.WithTLS(cfg), amqp.WithDefaultQueue(transientQ))
		if c != nil {
			c.Close()
		}
		require.Error(t, err)
		return time.Since(start), err
	}

	t.Run("wrong server name", func(t *testing.T) {
		took, err := dialErr(t, &tls.Config{RootCAs: p.roots, Certificates: []tls.Certificate{p.client}, ServerName: "other.stalk.test"})
		t.Logf("after %s: %v", took.Round(time.Millisecond), err)
		var he x509.HostnameError
		assert.ErrorAs(t, err, &he)
		assert.Contains(t, err.Error(), "other.stalk.test")
		assert.Contains(t, err.Error(), "certificate")
		assert.Less(t, took, 3*time.Second, "a certificate that does not verify is not retried until ctx ends")
	})

	t.Run("unknown CA", func(t *testing.T) {
		took, err := dialErr(t, &tls.Config{Certificates: []tls.Certificate{p.client}, ServerName: p.serverName})
		t.Logf("after %s: %v", took.Round(time.Millisecond), err)
		var ue x509.UnknownAuthorityError
		assert.ErrorAs(t, err, &ue)
		assert.Less(t, took, 3*time.Second)
	})

	t.Run("no client certificate", func(t *testing.T) {
		took, err := dialErr(t, &tls.Config{RootCAs: p.roots, ServerName: p.serverName})
		t.Logf("after %s: %v", took.Round(time.Millisecond), err)
		require.Error(t, err)
		// With TLS 1.3 the proxy's "certificate required" alert reaches the
		// client on its first read after the handshake; depending on timing
		// amqp091 reports that alert or only that the connection closed.
		msg := err.Error()
		assert.True(t, strings.Contains(msg, "certificate") || strings.Contains(msg, "not open") || strings.Contains(msg, "EOF"),
			"error names the refused certificate or the closed connection: %s", msg)
	})
}

// brokerUser creates a user (and, if vhost is not empty, a vhost where it
// has the given permissions, or none) and deletes them when t ends.
func brokerUser(t *testing.T, user, password, vhost string, perms ...string) {
	t.Helper()
	out, err := harness.Rabbitmqctl("add_user", user, password)
	require.NoError(t, err, out)
	t.Cleanup(func() {
		if out, err := harness.Rabbitmqctl("delete_user", user); err != nil {
			t.Logf("delete_user: %v: %s", err, out)
		}
	})
	if vhost == "" {
		return
	}
	out, err = harness.Rabbitmqctl("add_vhost", vhost)
	require.NoError(t, err, out)
	t.Cleanup(func() {
		if out, err := harness.Rabbitmqctl("delete_vhost", vhost); err != nil {
			t.Logf("delete_vhost: %v: %s", err, out)
		}
	})
	if len(perms) == 3 {
		out, err = harness.Rabbitmqctl(append([]string{"set_permissions", "-p", vhost, user}, perms...)...)
		require.NoError(t, err, out)
	}
}

func userURL(t testing.TB, user, password, vhost, hostport string) string {
	u, err := url.Parse(harness.BrokerURL())
	require.NoError(t, err)
	u.User = url.UserPassword(user, password)
	if vhost != "" {
		u.Path = "/" + vhost
	}
	if hostport != "" {
		u.Host = hostport
	}
	return u.String()
}

// TestFaultPasswordNeverLogged dials with a wrong password for a real user,
// and with a right one to a port nobody listens on: the password shows in
// neither the error nor the log.
func TestFaultPasswordNeverLogged(t *testing.T) {
	user := harness.Name("pwuser")
	right := "Right-" + harness.RunID + "-Sesame"
	wrong := "Wrong-" + harness.RunID + "-Sesame"
	brokerUser(t, user, right, "")

	// A free port that refuses connections.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedPort := ln.Addr().String()
	require.NoError(t, ln.Close())

	cases := []struct {
		name, url, secret string
		accessRefused     bool
		wait              time.Duration
	}{
		// RabbitMQ answers a failed login after about 3 s.
		{"wrong password", userURL(t, user, wrong, "", ""), wrong, true, 15 * time.Second},
		{"unreachable port", userURL(t, user, right, "", closedPort), right, false, 2 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logs := &harness.SyncBuffer{}
			ctx, cancel := context.WithTimeout(context.Background(), tc.wait)
			defer cancel()
			start := time.Now()
			c, err := amqp.Dial(ctx, tc.url, amqp.WithLogger(zerolog.New(logs).Level(zerolog.DebugLevel)),
				amqp.WithDefaultQueue(transientQ), amqp.WithBackoff(func(int) time.Duration { return 100 * time.Millisecond }))
			if c != nil {
				c.Close()
			}
			require.Error(t, err)
			t.Logf("error: %v", err)
			t.Logf("log: %s", logs.String())
			if tc.accessRefused {
				assert.ErrorIs(t, err, amqp.ErrAccessRefused)
				assert.Contains(t, err.Error(), "check the username and password")
				assert.Less(t, time.Since(start), 10*time.Second, "not retried")
			}
			assert.NotEmpty(t, logs.String(), "the client logged the attempt")
			assert.NotContains(t, err.Error(), tc.secret)
			assert.NotContains(t, logs.String(), tc.secret)
			assert.Contains(t, err.Error()+logs.String(), "xxxxx", "the URL shows, redacted")
		})
	}
}

// TestFaultPermissionDenied: a user with no permissions on the vhost, and
// one that may not declare queues, get an error that says so, at once.
func TestFaultPermissionDenied(t *testing.T) {
	cases := []struct {
		name  string
		perms []string
		mode  amqp.ReplyMode
	}{
		{"no permissions on the vhost", nil, amqp.PerTask},
		{"may not declare the reply queue", []string{"^$", ".*", ".*"}, amqp.Shared},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			user := harness.Name("noperm", string(rune('a'+i)))
			vhost := harness.Name("vhost", string(rune('a'+i)))
			brokerUser(t, user, "pw-"+harness.RunID, vhost, tc.perms...)
			logs := &harness.SyncBuffer{}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			c, err := amqp.Dial(ctx, userURL(t, user, "pw-"+harness.RunID, vhost, ""), amqp.WithReplyMode(tc.mode),
				amqp.WithLogger(zerolog.New(logs).Level(zerolog.DebugLevel)))
			took := time.Since(start)
			if c != nil {
				c.Close()
			}
			require.Error(t, err)
			t.Logf("after %s: %v", took.Round(time.Millisecond), err)
			assert.ErrorIs(t, err, amqp.ErrAccessRefused)
			assert.False(t, errors.Is(err, context.DeadlineExceeded), "not a timeout")
			assert.Less(t, took, 5*time.Second, "returned at once, without retrying")
			msg := strings.ToLower(err.Error())
			assert.Contains(t, msg, "access refused")
			assert.Contains(t, msg, "permission")
			assert.NotContains(t, err.Error(), "pw-"+harness.RunID)
			assert.NotContains(t, logs.String(), "pw-"+harness.RunID)
		})
	}
}
