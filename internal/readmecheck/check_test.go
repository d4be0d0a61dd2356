//lint:file-ignore U1000,SA4006 the functions hold the README's snippets verbatim; they only need to compile

package readmecheck

// Each function holds one of the README's Go snippets, verbatim (see
// drift_test.go), wrapped so that it compiles.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/result"
	"github.com/stalk-dev/stalk/revoke"
)

type Report struct{}

func intro(ctx context.Context, log zerolog.Logger) error {
	c, err := amqp.Dial(ctx, "amqp://guest:guest@localhost:5672/", amqp.WithLogger(log))
	if err != nil {
		return err
	}
	defer c.Close()

	r, err := c.Send(ctx, "tasks.add", amqp.Args(2, 3)) // returns once the broker confirms
	v, err := r.Get(ctx)                                // int64(5), or a *result.TaskError
	_ = v
	return err
}

func dial(ctx context.Context, logger zerolog.Logger, pool *x509.CertPool) (*amqp.Client, error) {
	c, err := amqp.Dial(ctx, "amqps://app:secret@rabbit:5671/prod",
		amqp.WithLogger(logger),                  // zerolog (or WithSlogLogger); Nop by default; passwords redacted
		amqp.WithReplyMode(amqp.PerTask),         // the default; or amqp.Shared
		amqp.WithTLS(&tls.Config{RootCAs: pool}), // custom CA, client certs, ServerName
		amqp.WithConnectionName("orders-api"),    // shown by rabbitmqctl list_connections
	)
	return c, err
}

func send(ctx context.Context, c *amqp.Client, reportID int) error {
	r, err := c.Send(ctx, "reports.render",
		amqp.Args(reportID),
		amqp.Kwargs(map[string]any{"format": "pdf"}),
		amqp.Queue("reports"),         // resolved through the client's topology; default "celery"
		amqp.Countdown(5*time.Second), // or amqp.ETA(t)
		amqp.Expires(time.Hour),       // the worker revokes it if it has not started by then
		amqp.Priority(5), amqp.TimeLimit(time.Minute), amqp.SoftTimeLimit(50*time.Second),
		amqp.Stamp("tenant", "acme"), // Celery 5.3+ stamping: revoke_by_stamped_headers matches it
	)
	v, err := r.Get(ctx)                                // ctx bounds the wait
	v, err = r.Get(ctx, result.Timeout(30*time.Second)) // Celery's timeout=
	var out Report
	err = r.GetInto(ctx, &out) // decode the JSON result into a type
	n, err := result.GetAs[int](ctx, r)
	_, _, _ = v, out, n
	return err
}

func failure(ctx context.Context, r *result.AsyncResult) {
	_, err := r.Get(ctx)
	var te *result.TaskError
	if errors.As(err, &te) {
		fmt.Println(te.Type, te.Module, te.Args, te.Traceback) // ValueError builtins [bad] Traceback...
	}
	errors.Is(err, result.ErrTaskFailed) // FAILURE
	errors.Is(err, result.ErrRevoked)    // REVOKED
	errors.Is(err, result.ErrTimeout)    // and errors.Is(err, context.DeadlineExceeded)
}

func progressOf(ctx context.Context, r *result.AsyncResult) (any, error) {
	type progress struct{ Current, Total int }
	v, err := r.Get(ctx, result.OnMessage(func(m result.Meta) {
		if m.Status == "PROGRESS" {
			p, _ := result.ResultAs[progress](&m) // update_state(meta={"current": ..., "total": ...})
			fmt.Printf("%d/%d\n", p.Current, p.Total)
		}
	}))
	return v, err
}

func then(r *result.AsyncResult, log zerolog.Logger, reqCtx context.Context, onValue func(any), onError func(error)) {
	r.Then(
		func(v any) { log.Info().Any("value", v).Msg("done") },
		func(err error) { log.Error().Err(err).Msg("failed") },
	)
	r.ThenContext(reqCtx, onValue, onError) // dropped, and collectable, once reqCtx ends
}

func attach(ctx context.Context, c *amqp.Client, id, other string) error {
	later := c.AsyncResult(id) // sent earlier, perhaps by another process
	state := later.State()     // PENDING until its latest state has arrived
	v, err := later.Get(ctx)
	ok, err := later.Exists(ctx)
	err = later.Forget(ctx)                                         // deletes the result (and its reply queue)
	err = later.Release()                                           // or: stop following it here, and keep what is stored
	v, err = c.AsyncResult(other).Get(ctx, result.ForgetAfterGet()) // read it, then delete it
	_, _, _ = state, v, ok
	return err
}

func revokeAndPing(ctx context.Context, c *amqp.Client, r *result.AsyncResult) error {
	replies, err := r.Revoke(ctx, revoke.Terminate(), revoke.Signal("SIGKILL"), revoke.Wait(2*time.Second))
	for _, rep := range replies {
		fmt.Println(rep.Worker, rep.OK, rep.Err())
	}
	_, err = r.Get(ctx) // errors.Is(err, result.ErrRevoked)

	ctrl, err := c.Control(ctx) // connects on first use
	pongs, err := ctrl.Ping(ctx)
	active, err := ctrl.Active(ctx)      // worker -> running tasks
	revoked, err := ctrl.RevokedIDs(ctx) // worker -> revoked ids
	_, _, _ = pongs, active, revoked
	return err
}

func follow(ctx context.Context) error {
	recv, err := events.Dial(ctx, "amqp://guest:guest@localhost:5672/")
	if err != nil {
		return err
	}
	defer recv.Close()
	st := events.NewState()
	st.OnTask(func(t events.Task) {
		fmt.Printf("%s %-10s %s on %s\n", t.ID, t.State, t.Name, t.Worker)
	})
	sub, err := recv.Subscribe(ctx, st.Apply, events.OnlyTasks())
	if err != nil {
		return err
	}
	<-sub.Closed() // until ctx ends
	return nil
}

func canvas(ctx context.Context, c *amqp.Client) error {
	// chain(add.s(1, 2), add.s(10), add.s(100)), every step routed to "math"
	last, err := c.Chain(ctx, amqp.NewChain(
		amqp.Sig("tasks.add", amqp.Args(1, 2)),
		amqp.Sig("tasks.add", amqp.Args(10)),
		amqp.Sig("tasks.add", amqp.Args(100)),
	), amqp.Queue("math"))
	v, err := last.Get(ctx) // 113; a failed step's error comes first

	members := make([]amqp.Canvas, 50)
	for i := range members {
		members[i] = amqp.Sig("tasks.add", amqp.Args(i, i))
	}
	g, err := c.Group(ctx, amqp.NewGroup(members...))
	for r, err := range g.Iter(ctx) { // in completion order
		fmt.Println(r.ID(), err)
	}
	values, err := g.Join(ctx, result.Propagate(false)) // member order; failures as *result.TaskError
	_, _ = v, values
	return err
}

func quorum(ctx context.Context, url string) (*amqp.Client, error) {
	c, err := amqp.Dial(ctx, url,
		amqp.WithTaskQueues(amqp.TaskQueue{ // Celery's task_queues
			Name: "reports", Exchange: "reports", ExchangeType: amqp.TopicExchange,
			RoutingKey: "reports.render", Type: amqp.Quorum,
		}),
		amqp.WithDefaultQueueType(amqp.Quorum), // task_default_queue_type
		amqp.WithMissingQueueType(amqp.Quorum), // task_create_missing_queue_type
		amqp.WithDelayedDelivery(amqp.DelayedAuto),
	)
	return c, err
}

func cluster(ctx context.Context) (*amqp.Client, error) {
	c, err := amqp.Dial(ctx, "amqp://app:secret@rabbit-1//;amqp://app:secret@rabbit-2//;amqp://app:secret@rabbit-3//",
		amqp.WithFailover(amqp.Shuffle), // or RoundRobin, the default
		amqp.WithReplyMode(amqp.Shared),
		amqp.WithReplyQueueType(amqp.Quorum), // results survive losing any one node
		amqp.WithDefaultQueueType(amqp.Quorum),
	)
	return c, err
}

func tracing(ctx context.Context, url string, tp trace.TracerProvider, id int) error {
	// tp is your SDK's TracerProvider (sdktrace.NewTracerProvider(...)), set globally or passed in.
	otel.SetTextMapPropagator(propagation.TraceContext{})      // once, at start-up
	c, err := amqp.Dial(ctx, url, amqp.WithTracerProvider(tp)) // also WithMeterProvider, WithPropagator
	ctx, span := tp.Tracer("web").Start(ctx, "GET /report")
	defer span.End()
	r, err := c.Send(ctx, "reports.render", amqp.Args(id)) // traceparent and tracestate go with it
	_ = r
	return err
}

// Options the README names in prose.
var _ = []amqp.Option{
	amqp.WithEvents(),
	amqp.WithSentEvents(true),
	amqp.WithReplyQueue("orders-api-1"),
	amqp.WithResultCache(1000, time.Hour),
	amqp.WithBrokerURLs("amqp://b//"),
	amqp.WithDeclareQueues(false),
	amqp.WithCreateMissingQueues(true),
	amqp.WithMissingExchangeType(amqp.TopicExchange),
}
