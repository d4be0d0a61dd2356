package readmecheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/events"
	"github.com/stalk-dev/stalk/result"
	"github.com/stalk-dev/stalk/revoke"
)

type Report struct{}

func tour(ctx context.Context, logger zerolog.Logger, pool *x509.CertPool, reportID int, id string, reqCtx context.Context) error {
	c, err := amqp.Dial(ctx, "amqps://app:secret@rabbit:5671/prod",
		amqp.WithLogger(logger),
		amqp.WithReplyMode(amqp.PerTask),
		amqp.WithTLS(&tls.Config{RootCAs: pool}),
		amqp.WithConnectionName("orders-api"),
	)
	if err != nil {
		return err
	}
	r, err := c.Send(ctx, "reports.render",
		amqp.Args(reportID),
		amqp.Kwargs(map[string]any{"format": "pdf"}),
		amqp.Queue("reports"),
		amqp.Countdown(5*time.Second),
		amqp.Expires(time.Hour),
		amqp.Priority(5), amqp.TimeLimit(time.Minute), amqp.SoftTimeLimit(50*time.Second),
	)
	v, err := r.Get(ctx)
	v, err = r.Get(ctx, result.Timeout(30*time.Second))
	var out Report
	err = r.GetInto(ctx, &out)
	n, err := result.GetAs[int](ctx, r)
	_, _ = v, n
	var te *result.TaskError
	if errors.As(err, &te) {
		fmt.Println(te.Type, te.Module, te.Args, te.Traceback)
	}
	_ = errors.Is(err, result.ErrTaskFailed) || errors.Is(err, result.ErrRevoked) || errors.Is(err, result.ErrTimeout)
	v, err = r.Get(ctx, result.OnMessage(func(m result.Meta) {
		if m.Status == "PROGRESS" {
			meta := m.Result.(map[string]any)
			fmt.Printf("%v/%v\n", meta["current"], meta["total"])
		}
	}))
	r.Then(func(v any) {}, func(err error) {})
	onValue, onError := func(any) {}, func(error) {}
	r.ThenContext(reqCtx, onValue, onError)
	later := c.AsyncResult(id)
	state := later.State()
	_ = state
	v, err = later.Get(ctx)
	ok, err := later.Exists(ctx)
	_ = ok
	err = later.Forget(ctx)
	replies, err := r.Revoke(ctx, revoke.Terminate(), revoke.Signal("SIGKILL"), revoke.Wait(2*time.Second))
	for _, rep := range replies {
		fmt.Println(rep.Worker, rep.OK, rep.Err())
	}
	pongs, err := c.Control().Ping(ctx)
	active, err := c.Control().Active(ctx)
	revoked, err := c.Control().RevokedIDs(ctx)
	_, _, _ = pongs, active, revoked

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
	<-sub.Closed()

	last, err := c.Apply(ctx, amqp.NewChain(
		amqp.Sig("tasks.add", amqp.Args(1, 2)),
		amqp.Sig("tasks.add", amqp.Args(10)),
		amqp.Sig("tasks.add", amqp.Args(100)),
	), amqp.Queue("math"))
	v, err = last.(*result.AsyncResult).Get(ctx)
	members := make([]amqp.Canvas, 50)
	for i := range members {
		members[i] = amqp.Sig("tasks.add", amqp.Args(i, i))
	}
	g, err := c.Group(ctx, members...)
	for r, err := range g.Iter(ctx) {
		_, _ = r, err
	}
	values, err := g.Join(ctx, result.Propagate(false))
	_ = values
	_ = amqp.WithEvents()
	_ = amqp.WithSentEvents(true)
	_ = amqp.WithReplyQueue("orders-api-1")
	_ = amqp.WithResultCache(1000, time.Hour)
	return err
}
