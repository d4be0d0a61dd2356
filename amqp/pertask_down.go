package amqp

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stalk-dev/stalk/internal/broker"
	"github.com/stalk-dev/stalk/result"
)

// On a cluster, a per-task reply queue is a classic queue on one node. When
// that node is down, the queue is unreachable rather than gone: its entry
// is marked unreachable, and the queue is looked for every second until the
// node is back.

// recheckDelay is how long after a reconnect on a cluster the re-consumed
// queues are looked at again: right after a node dies, the other nodes may
// not know yet, and accept a consumer on a queue of the dead node that
// will never deliver.
const recheckDelay = 2 * time.Second

// recheckLater looks again, after recheckDelay, at every queue followed on
// connection gen, and marks those on a node that is down.
func (p *perTaskReplies) recheckLater(gen uint64) {
	p.c.wg.Add(1)
	go func() {
		defer p.c.wg.Done()
		select {
		case <-p.c.done:
			return
		case <-time.After(recheckDelay):
		}
		p.fmu.Lock()
		var fs []*follow
		for _, f := range p.follows {
			if f.gen == gen {
				fs = append(fs, f)
			}
		}
		p.fmu.Unlock()
		for _, f := range fs {
			if node, down := p.homeNodeDown(f.queue); down {
				p.unfollow(f, nil)
				p.markDown(f.entry, f.queue, node)
			}
		}
	}()
}

// homeNodeDown asks the broker whether queue is unreachable because its
// home node is down.
func (p *perTaskReplies) homeNodeDown(queue string) (string, bool) {
	ctx, cancel := context.WithTimeout(p.c.conn.Life(), 5*time.Second)
	defer cancel()
	conn, err := p.c.conn.Connection(ctx)
	if err != nil {
		return "", false
	}
	_, _, err = broker.QueueExistsOn(conn, queue)
	return broker.HomeNodeDown(err)
}

// markDown records that e's queue is on a node that is down: its waits
// say so if they end, and the queue is looked for again every second
// until the node is back.
func (p *perTaskReplies) markDown(e *result.Entry, queue, node string) {
	if e == nil {
		return
	}
	e.MarkUnreachable(fmt.Sprintf("reply queue %q is on node %s, which is down", queue, node))
	p.fmu.Lock()
	p.down[e.ID()] = e
	if f := p.follows[e.ID()]; f != nil && f.entry == e {
		delete(p.follows, e.ID())
	}
	p.fmu.Unlock()
	p.c.stats.unreachable.Add(1)
	p.c.log.Warn().Str("queue", queue).Str("node", node).Str("task_id", e.ID()).Msg("reply queue unreachable: its home node is down; waiting for it")
	p.watchOnce.Do(func() {
		p.c.wg.Add(1)
		go p.watchDown()
	})
}

// watchDown looks again, every second, for the queues whose node was down,
// and follows them once they are back.
func (p *perTaskReplies) watchDown() {
	defer p.c.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.c.done:
			return
		case <-t.C:
		}
		p.fmu.Lock()
		down := make([]*result.Entry, 0, len(p.down))
		for _, e := range p.down {
			down = append(down, e)
		}
		p.fmu.Unlock()
		for _, e := range down {
			p.retryDown(e)
		}
	}
}

func (p *perTaskReplies) retryDown(e *result.Entry) {
	id := e.ID()
	forget := func() {
		p.fmu.Lock()
		if p.down[id] == e {
			delete(p.down, id)
		}
		p.fmu.Unlock()
	}
	if !p.c.reg.isPending(id, e) || p.c.conn.State() != broker.Ready {
		if !p.c.reg.isPending(id, e) {
			forget()
		}
		return
	}
	q := p.queueFor(id)
	if _, down := p.homeNodeDown(q); down {
		return
	}
	forget()
	e.MarkUnreachable("")
	p.c.log.Info().Str("queue", q).Str("task_id", id).Msg("reply queue reachable again")
	l := p.pickLane()
	l.mu.Lock()
	gen := l.gen
	l.mu.Unlock()
	if err := p.followOn(l, e, gen, true); errors.Is(err, errLaneReset) {
		p.refollowLane(l)
	} else if err != nil {
		// A reconnect re-follows every pending entry anyway.
		p.c.log.Debug().Err(err).Str("task_id", id).Msg("follow after the node came back")
	}
}
