package result

import "time"

// GetOption configures Get and Wait.
type GetOption func(*getConfig)

type getConfig struct {
	timeout       time.Duration
	propagate     bool
	followParents bool
	onMessage     func(Meta)
	interval      time.Duration
	onInterval    func()
	callback      func(id string, v any)
	forget        bool
}

func newGetConfig(opts []GetOption) getConfig {
	c := getConfig{propagate: true, followParents: true}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	return c
}

// Timeout bounds the wait, like Celery's timeout argument. When it expires
// Get returns an error that satisfies errors.Is(err, ErrTimeout). Default:
// none; ctx alone bounds the wait.
func Timeout(d time.Duration) GetOption { return func(c *getConfig) { c.timeout = d } }

// Propagate controls whether a FAILURE or REVOKED result is returned as the
// error (true, the default) or as the value, a *TaskError, with a nil error.
func Propagate(b bool) GetOption { return func(c *getConfig) { c.propagate = b } }

// FollowParents makes Get return the error of a failed ancestor (in a
// chain) as soon as it is known, as Celery does. Default: true. It only
// applies while Propagate is true.
func FollowParents(b bool) GetOption { return func(c *getConfig) { c.followParents = b } }

// OnMessage is called with every message for this task while Get waits,
// starting with those already received, in order: STARTED, RETRY, custom
// states such as PROGRESS, and the final state. It runs on Get's own
// goroutine.
func OnMessage(fn func(Meta)) GetOption { return func(c *getConfig) { c.onMessage = fn } }

// OnInterval calls fn every d while Get waits, on Get's goroutine. Celery's
// `interval` argument is the d here.
func OnInterval(d time.Duration, fn func()) GetOption {
	return func(c *getConfig) { c.interval, c.onInterval = d, fn }
}

// Callback is called with the task id and the value once Get has it, before
// Get returns.
func Callback(fn func(id string, v any)) GetOption { return func(c *getConfig) { c.callback = fn } }

// ForgetAfterGet forgets the result once Get has it (AsyncResult.Forget:
// its parents too): in per-task mode its reply queue is deleted instead of
// staying on the broker until it expires (WithResultExpires, a day by
// default). Use it when nobody else will read the result by id. The
// deletion is best effort: if it fails, Get still returns the value, and
// the queue expires by itself. Default: off.
func ForgetAfterGet() GetOption { return func(c *getConfig) { c.forget = true } }

// NoAck is accepted for compatibility with Celery's no_ack argument. It has
// no effect: stalk's consumer acknowledges as its reply mode requires.
func NoAck(bool) GetOption { return func(*getConfig) {} }

// DisableSyncSubtasks is accepted for compatibility with Celery's
// disable_sync_subtasks argument. It only has meaning inside a Celery
// worker process, where Go code never runs, so it has no effect.
func DisableSyncSubtasks(bool) GetOption { return func(*getConfig) {} }

// Option configures New.
type Option func(*AsyncResult)

// WithParent sets the result's parent (the previous step of a chain).
func WithParent(p *AsyncResult) Option { return func(r *AsyncResult) { r.parent = p } }

// WithTaskName records the task's name, when known.
func WithTaskName(name string) Option { return func(r *AsyncResult) { r.name = name } }

// WithApp records the application (client) the result belongs to.
func WithApp(app any) Option { return func(r *AsyncResult) { r.app = app } }

// WithIgnored marks a task sent with ignore_result: Get returns nil at
// once, as in Celery.
func WithIgnored(b bool) Option { return func(r *AsyncResult) { r.ignored = b } }

// WithEntry makes the result read the given entry instead of attaching
// through the backend. Backends use it for results they created.
func WithEntry(e *Entry) Option { return func(r *AsyncResult) { r.entry = e } }
