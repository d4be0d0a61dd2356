package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// State is the connection's lifecycle state.
type State int32

const (
	// Connecting: the first dial has not succeeded yet.
	Connecting State = iota
	// Ready: connected, and every setup hook has run.
	Ready
	// Reconnecting: the connection was lost; the supervisor is redialling.
	Reconnecting
	// Closed: Close was called. Terminal.
	Closed
)

func (s State) String() string {
	switch s {
	case Connecting:
		return "connecting"
	case Ready:
		return "ready"
	case Reconnecting:
		return "reconnecting"
	case Closed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Backoff returns how long to wait before redial attempt n (n starts at 1).
type Backoff func(attempt int) time.Duration

// DefaultBackoff is capped exponential backoff with full jitter: a random
// duration in [base/2, min(cap, 100ms·2^(n-1))], cap 5 s.
func DefaultBackoff(attempt int) time.Duration {
	const base, max = 100 * time.Millisecond, 5 * time.Second
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(d-half)+1))
}

// Hook runs on every new connection, before the Conn reports Ready. An error
// from a hook closes that connection and triggers a redial, unless it is a
// permanent error (see Permanent).
type Hook func(ctx context.Context, conn *amqp091.Connection) error

// Config configures a Conn. Only URL is required.
type Config struct {
	// URL is the broker's URL, or several separated by ";" (Celery's form:
	// "amqp://a//;amqp://b//"), the nodes of a cluster to fail over between.
	URL       string
	Failover  Failover
	TLS       *tls.Config   // used for amqps:// URLs; nil means the system roots
	Name      string        // connection_name client property, shown by rabbitmqctl
	Heartbeat time.Duration // default 10 s
	Backoff   Backoff       // default DefaultBackoff
	Logger    zerolog.Logger
	// DialTimeout bounds one TCP+AMQP handshake attempt. Default 10 s.
	DialTimeout time.Duration
}

// Conn is a supervised AMQP connection. It is safe for concurrent use.
type Conn struct {
	cfg    Config
	urls   []string // the nodes, in failover order
	cur    int      // index of the URL in use (guarded by mu)
	log    zerolog.Logger
	life   context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	state     State
	conn      *amqp091.Connection
	readyCh   chan struct{} // closed while state == Ready; replaced when leaving Ready
	hooks     []Hook
	listeners []func(State)
	lastErr   error
	blocked   bool
	unblocked chan struct{} // closed while not blocked
	closeOnce sync.Once
}

// Dial connects and starts the supervisor. It returns once the first
// connection is Ready. Network errors are retried with backoff until ctx
// ends; an authentication, permission or vhost error, or a TLS certificate
// that does not verify, is returned at once, since retrying cannot fix it.
// Once connected, the supervisor redials after any error, these included,
// until Close. ctx bounds only the first connection, not the Conn's
// lifetime.
func Dial(ctx context.Context, cfg Config, hooks ...Hook) (*Conn, error) {
	c, err := Start(cfg, hooks...)
	if err != nil {
		return nil, err
	}
	if err := c.WaitReady(ctx); err != nil {
		last := c.LastError()
		c.Close()
		if last != nil && !errors.Is(err, ErrClosed) {
			return nil, fmt.Errorf("%w: %w", err, last)
		}
		if last != nil {
			return nil, last
		}
		return nil, err
	}
	return c, nil
}

// Start creates a Conn and starts its supervisor without waiting for the
// first connection. Use WaitReady to wait for it.
func Start(cfg Config, hooks ...Hook) (*Conn, error) {
	urls, err := ParseURLs(cfg.URL)
	if err != nil {
		return nil, err
	}
	switch cfg.Failover {
	case RoundRobin, Shuffle:
	default:
		return nil, fmt.Errorf("stalk: unknown failover strategy %d", cfg.Failover)
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 10 * time.Second
	}
	if cfg.Backoff == nil {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	c := &Conn{
		cfg:       cfg,
		urls:      urls,
		log:       cfg.Logger.With().Str("conn", cfg.Name).Logger(),
		readyCh:   make(chan struct{}),
		hooks:     append([]Hook(nil), hooks...),
		unblocked: make(chan struct{}),
	}
	close(c.unblocked)
	if cfg.Failover == Shuffle {
		rand.Shuffle(len(c.urls), func(i, j int) { c.urls[i], c.urls[j] = c.urls[j], c.urls[i] })
	}
	c.life, c.cancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go c.supervise()
	return c, nil
}

// URL returns the URL of the node the Conn is connected to, or was last
// connected to, with passwords redacted.
func (c *Conn) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Redact(c.urls[c.cur])
}

// AddHook registers a hook that runs on every future connection. If the
// Conn is Ready now, the hook also runs at once on the current connection,
// and its error is returned.
func (c *Conn) AddHook(ctx context.Context, h Hook) error {
	c.mu.Lock()
	c.hooks = append(c.hooks, h)
	conn := c.conn
	ready := c.state == Ready
	c.mu.Unlock()
	if ready && conn != nil {
		return h(ctx, conn)
	}
	return nil
}

// OnStateChange registers fn to be called on every state change. fn runs on
// the supervisor goroutine and must return quickly.
func (c *Conn) OnStateChange(fn func(State)) {
	c.mu.Lock()
	c.listeners = append(c.listeners, fn)
	c.mu.Unlock()
}

// State returns the current state.
func (c *Conn) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// LastError returns the error that ended the last connection or dial
// attempt, with passwords redacted, or nil.
func (c *Conn) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// Life returns a context that ends when the Conn is closed.
func (c *Conn) Life() context.Context { return c.life }

// Logger returns the Conn's logger.
func (c *Conn) Logger() zerolog.Logger { return c.log }

// WaitReady blocks until the Conn is Ready, ctx ends, or the Conn is closed.
func (c *Conn) WaitReady(ctx context.Context) error {
	for {
		c.mu.Lock()
		st, ch := c.state, c.readyCh
		last := c.lastErr
		c.mu.Unlock()
		if st == Closed {
			if last != nil && isPermanent(last) {
				return last
			}
			return ErrClosed
		}
		if st == Ready {
			return nil
		}
		select {
		case <-ch:
		case <-c.life.Done():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Connection waits until Ready and returns the current connection.
func (c *Conn) Connection(ctx context.Context) (*amqp091.Connection, error) {
	for {
		if err := c.WaitReady(ctx); err != nil {
			return nil, err
		}
		c.mu.Lock()
		conn := c.conn
		c.mu.Unlock()
		if conn != nil && !conn.IsClosed() {
			return conn, nil
		}
		// The connection just died; wait for the supervisor to notice.
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Channel waits until Ready and opens a new channel on the current
// connection.
func (c *Conn) Channel(ctx context.Context) (*amqp091.Channel, error) {
	for {
		conn, err := c.Connection(ctx)
		if err != nil {
			return nil, err
		}
		ch, err := conn.Channel()
		if err == nil {
			return ch, nil
		}
		if !conn.IsClosed() {
			return nil, fmt.Errorf("stalk: open channel: %w", err)
		}
	}
}

// WaitUnblocked waits while the broker has blocked publishing on this
// connection (a memory or disk alarm), until ctx ends.
func (c *Conn) WaitUnblocked(ctx context.Context) error {
	c.mu.Lock()
	ch := c.unblocked
	c.mu.Unlock()
	select {
	case <-ch:
		return nil
	default:
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stalk: broker is blocking publishes (resource alarm): %w", ctx.Err())
	case <-c.life.Done():
		return ErrClosed
	}
}

// Blocked reports whether the broker is blocking publishes right now.
func (c *Conn) Blocked() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocked
}

// Reset closes the current connection so that the supervisor redials. Use
// it when a component finds its channel in a state it cannot recover.
func (c *Conn) Reset(reason error) {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		c.log.Warn().Err(reason).Msg("resetting connection")
		_ = conn.Close()
	}
}

// Close stops the supervisor, closes the connection and waits for the
// supervisor to exit. It is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		c.mu.Lock()
		conn := c.conn
		c.mu.Unlock()
		if conn != nil {
			_ = conn.Close()
		}
	})
	c.wg.Wait()
	return nil
}

func (c *Conn) setState(s State, conn *amqp091.Connection) {
	c.mu.Lock()
	if c.state == Closed {
		c.mu.Unlock()
		return
	}
	prev := c.state
	c.state = s
	if conn != nil || s != Ready {
		c.conn = conn
	}
	if s == Ready {
		close(c.readyCh)
	} else if prev == Ready {
		c.readyCh = make(chan struct{})
	}
	if s == Closed {
		// wake every waiter
		select {
		case <-c.readyCh:
		default:
			close(c.readyCh)
		}
	}
	ls := append([]func(State){}, c.listeners...)
	c.mu.Unlock()
	if prev != s {
		for _, fn := range ls {
			fn(s)
		}
	}
}

func (c *Conn) supervise() {
	defer c.wg.Done()
	defer c.setState(Closed, nil)
	attempt := 0       // failed rounds over every URL since the last connection
	failed := 0        // failed dials in the current round
	connected := false // a connection has been Ready before
	for {
		if c.life.Err() != nil {
			return
		}
		conn, err := c.connectOnce()
		if err != nil {
			c.mu.Lock()
			c.lastErr = err
			c.mu.Unlock()
			if isPermanent(err) && !connected {
				// Bad credentials, a refused vhost or permission, a
				// certificate that does not verify: Dial reports it at
				// once instead of retrying until its ctx ends.
				c.log.Error().Err(err).Msg("broker refused the connection; not retrying")
				c.cancel()
				return
			}
			failed++
			c.advance()
			if failed < len(c.urls) {
				// Another node of the list has not been tried in this
				// round: fail over to it at once.
				c.log.Warn().Err(err).Str("next", c.URL()).Msg("connect failed; trying the next broker")
				continue
			}
			failed = 0
			attempt++
			d := c.cfg.Backoff(attempt)
			if isPermanent(err) {
				// After a working connection, keep redialling: permissions
				// and certificates can be fixed while we wait, and giving up
				// would leave every waiter hanging on a dead client.
				c.log.Error().Err(err).Int("attempt", attempt).Dur("backoff", d).Msg("broker refused the connection; retrying")
			} else {
				c.log.Warn().Err(err).Int("attempt", attempt).Dur("backoff", d).Msg("connect failed")
			}
			select {
			case <-time.After(d):
				continue
			case <-c.life.Done():
				return
			}
		}
		if attempt > 0 || failed > 0 {
			c.log.Info().Int("rounds", attempt).Str("broker", c.URL()).Msg("reconnected")
		}
		attempt, failed = 0, 0
		connected = true
		closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp091.Blocking, 4))
		c.setState(Ready, conn)
		c.watch(conn, closed, blocked)
		if c.life.Err() != nil {
			return
		}
		c.setState(Reconnecting, nil)
		// The node may be going down: the next attempt goes to the next
		// one in the list (with one URL, the same).
		c.advance()
	}
}

// advance moves to the next URL in failover order; after the last one,
// a shuffled list is shuffled again.
func (c *Conn) advance() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur++
	if c.cur == len(c.urls) {
		c.cur = 0
		if c.cfg.Failover == Shuffle && len(c.urls) > 1 {
			rand.Shuffle(len(c.urls), func(i, j int) { c.urls[i], c.urls[j] = c.urls[j], c.urls[i] })
		}
	}
}

// watch blocks until conn closes or the Conn is closed.
func (c *Conn) watch(conn *amqp091.Connection, closed chan *amqp091.Error, blocked chan amqp091.Blocking) {
	for {
		select {
		case e, ok := <-closed:
			c.setBlocked(false)
			var err error = errors.New("connection closed")
			if ok && e != nil {
				err = e
			}
			c.mu.Lock()
			c.lastErr = err
			c.mu.Unlock()
			if c.life.Err() == nil {
				c.log.Warn().Err(err).Str("broker", c.URL()).Msg("connection lost")
			}
			// drain so amqp091 never blocks on us
			go func() {
				for range blocked {
				}
			}()
			return
		case b, ok := <-blocked:
			if !ok {
				blocked = nil
				continue
			}
			c.setBlocked(b.Active)
			if b.Active {
				c.log.Warn().Str("reason", b.Reason).Msg("broker blocked publishing")
			} else {
				c.log.Info().Msg("broker unblocked publishing")
			}
		case <-c.life.Done():
			_ = conn.Close()
			return
		}
	}
}

func (c *Conn) setBlocked(b bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b == c.blocked {
		return
	}
	c.blocked = b
	if b {
		c.unblocked = make(chan struct{})
	} else {
		close(c.unblocked)
	}
}

func (c *Conn) connectOnce() (*amqp091.Connection, error) {
	props := amqp091.NewConnectionProperties()
	if c.cfg.Name != "" {
		props.SetClientConnectionName(c.cfg.Name)
	}
	props["product"] = "stalk"
	cfg := amqp091.Config{
		Heartbeat:       c.cfg.Heartbeat,
		Properties:      props,
		TLSClientConfig: c.cfg.TLS,
		Dial:            amqp091.DefaultDial(c.cfg.DialTimeout),
	}
	c.mu.Lock()
	u := c.urls[c.cur]
	c.mu.Unlock()
	conn, err := amqp091.DialConfig(u, cfg)
	if err != nil {
		return nil, classify(fmt.Errorf("%s: %w", Redact(u), redactErr(err, c.cfg.URL)))
	}
	c.mu.Lock()
	hooks := append([]Hook(nil), c.hooks...)
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(c.life, 30*time.Second)
	defer cancel()
	for _, h := range hooks {
		if err := h(ctx, conn); err != nil {
			_ = conn.Close()
			return nil, classify(fmt.Errorf("%s: %w", Redact(u), redactErr(err, c.cfg.URL)))
		}
	}
	return conn, nil
}

// PermanentError marks an error that redialling cannot fix: bad
// credentials, no access to the vhost, a refused permission.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err as a PermanentError.
func Permanent(err error) error { return &PermanentError{Err: err} }

func isPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

func classify(err error) error {
	// The specific errors first: ErrCredentials and ErrVhost are
	// *amqp091.Error values with the generic 403 and 530 codes.
	if errors.Is(err, amqp091.ErrSASL) || errors.Is(err, amqp091.ErrCredentials) {
		return Permanent(fmt.Errorf("%w (check the username and password): %w", ErrAccessRefused, err))
	}
	if errors.Is(err, amqp091.ErrVhost) {
		return Permanent(fmt.Errorf("%w (the vhost does not exist, or the user has no permissions on it): %w", ErrAccessRefused, err))
	}
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp091.AccessRefused, amqp091.NotAllowed:
			return Permanent(fmt.Errorf("%w (check the user's permissions on the vhost): %w", ErrAccessRefused, err))
		}
	}
	var cve *tls.CertificateVerificationError
	var he x509.HostnameError
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	if errors.As(err, &cve) || errors.As(err, &he) || errors.As(err, &ua) || errors.As(err, &ci) {
		return Permanent(fmt.Errorf("stalk: the broker's TLS certificate does not verify (check the CA, the ServerName and the certificate): %w", err))
	}
	return err
}
