package fault

import (
	"crypto/tls"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/integration/harness"
)

// proxy forwards TCP connections to the broker. The test can cut it (a
// network partition: every connection is closed and new ones are refused)
// and heal it. With a tls.Config it terminates TLS.
type proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
}

func startProxy(t testing.TB, tlsCfg *tls.Config) *proxy {
	t.Helper()
	u, err := url.Parse(harness.BrokerURL())
	require.NoError(t, err)
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5672")
	}
	var ln net.Listener
	if tlsCfg != nil {
		ln, err = tls.Listen("tcp", "127.0.0.1:0", tlsCfg)
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// URL is the broker URL through the proxy, with the given scheme.
func (p *proxy) URL(scheme string) string {
	u, _ := url.Parse(harness.BrokerURL())
	u.Scheme = scheme
	u.Host = p.ln.Addr().String()
	return u.String()
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		if !down {
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if down {
			_ = c.Close()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.pipe(c)
		}()
	}
}

func (p *proxy) pipe(c net.Conn) {
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		_ = c.Close()
	}()
	if tc, ok := c.(*tls.Conn); ok {
		// Verify the client certificate before touching the broker.
		if err := tc.Handshake(); err != nil {
			return
		}
	}
	b, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	if p.down {
		p.mu.Unlock()
		_ = b.Close()
		return
	}
	p.conns[b] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, b)
		p.mu.Unlock()
		_ = b.Close()
	}()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, c); _ = b.Close(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, b); _ = c.Close(); done <- struct{}{} }()
	<-done
	<-done
}

// cut closes every proxied connection and refuses new ones until heal.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		_ = c.Close()
	}
}

func (p *proxy) heal() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}

func (p *proxy) close() {
	_ = p.ln.Close()
	p.cut()
	p.wg.Wait()
}
