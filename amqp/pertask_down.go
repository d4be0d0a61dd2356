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

// downEntry is a pending entry whose reply queue's home node is down.
type downEntry struct {
	e     *result.Entry
	queue string
	node  string
}

// markDown records that e's queue is on a node that is down: its waits
// say so if they end, and the node is looked at again every second until
// it is back. It warns once per entry and outage.
func (p *perTaskReplies) markDown(e *result.Entry, queue, node string) {
	if e == nil {
		return
	}
	e.MarkUnreachable(fmt.Sprintf("reply queue %q is on node %s, which is down", queue, node))
	p.fmu.Lock()
	old, again := p.down[e.ID()]
	again = again && old.e == e
	p.down[e.ID()] = downEntry{e: e, queue: queue, node: node}
	if f := p.follows[e.ID()]; f != nil && f.entry == e {
		delete(p.follows, e.ID())
	}
	p.fmu.Unlock()
	if again {
		p.c.log.Debug().Str("queue", queue).Str("node", node).Str("task_id", e.ID()).Msg("reply queue still unreachable")
	} else {
		p.c.stats.unreachable.Add(1)
		p.c.log.Warn().Str("queue", queue).Str("node", node).Str("task_id", e.ID()).Msg("reply queue unreachable: its home node is down; waiting for it")
	}
	p.watchOnce.Do(func() {
		p.c.wg.Add(1)
		go p.watchDown()
	})
}

// watchDown looks again, every second, at the nodes that were down, and
// follows their queues once they are back.
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
		if p.c.conn.State() != broker.Ready {
			continue
		}
		for _, des := range p.downByNode() {
			p.retryNode(des)
		}
	}
}

// downByNode returns the down entries still pending, grouped by node, and
// forgets the others.
func (p *perTaskReplies) downByNode() map[string][]downEntry {
	p.fmu.Lock()
	all := make([]downEntry, 0, len(p.down))
	for _, d := range p.down {
		all = append(all, d)
	}
	p.fmu.Unlock()
	by := make(map[string][]downEntry)
	for _, d := range all {
		if p.c.reg.isPending(d.e.ID(), d.e) {
			by[d.node] = append(by[d.node], d)
			continue
		}
		p.fmu.Lock()
		if cur, ok := p.down[d.e.ID()]; ok && cur.e == d.e {
			delete(p.down, d.e.ID())
		}
		p.fmu.Unlock()
	}
	return by
}

// retryNode probes one queue of a node that was down; once a consumer can
// be set up on it, it follows every queue of that node again. The probe
// runs on a channel of its own: a failed consume closes its channel, and a
// lane's would take the lane's other consumers with it. A passive declare
// alone does not tell: it can succeed for a queue whose node is down.
func (p *perTaskReplies) retryNode(des []downEntry) {
	probe := des[0].queue
	if _, down := p.homeNodeDown(probe); down {
		return
	}
	ctx, cancel := context.WithTimeout(p.c.conn.Life(), 5*time.Second)
	conn, err := p.c.conn.Connection(ctx)
	cancel()
	if err != nil {
		return
	}
	if err := broker.ConsumeProbe(conn, probe); err != nil {
		if _, down := broker.HomeNodeDown(err); !down {
			p.c.log.Debug().Err(err).Str("queue", probe).Msg("probe of a reply queue whose node was down")
		}
		return
	}
	p.c.log.Info().Str("node", des[0].node).Int("queues", len(des)).Msg("reply queues reachable again")
	for _, d := range des {
		p.retryDown(d)
	}
}

// retryDown follows d's queue again, its node being back.
func (p *perTaskReplies) retryDown(d downEntry) {
	e, id := d.e, d.e.ID()
	p.fmu.Lock()
	if cur, ok := p.down[id]; ok && cur.e == e {
		delete(p.down, id)
	}
	p.fmu.Unlock()
	if !p.c.reg.isPending(id, e) {
		return
	}
	e.MarkUnreachable("")
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
