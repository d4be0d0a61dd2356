package amqp

import (
	"container/list"
	"sync"
	"time"

	"github.com/stalk-dev/stalk/result"
)

// registry maps task ids to their entries. Pending holds the entries
// somebody asked for that have not settled; they are never evicted. cache
// holds settled entries and entries for ids nobody has asked for yet
// (orphans), bounded by a size and a TTL. Evictions are reported apart:
// an orphan that goes unread is worth a warning, a result that was asked
// for is not.
type registry struct {
	mu      sync.Mutex
	pending map[string]*result.Entry
	cache   *lru
}

func newRegistry(size int, ttl time.Duration) *registry {
	return &registry{pending: make(map[string]*result.Entry), cache: newLRU(size, ttl)}
}

// attach returns the entry for id and whether it must be followed (it is
// newly pending).
func (r *registry) attach(id string) (e *result.Entry, follow bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.pending[id]; e != nil {
		return e, false
	}
	if e := r.cache.get(id); e != nil {
		if e.State().Ready() {
			r.cache.claim(id)
			return e, false
		}
		r.cache.remove(id)
		r.pending[id] = e
		return e, true
	}
	e = result.NewEntry(id)
	r.pending[id] = e
	return e, true
}

// register adds a fresh entry for a task about to be sent.
func (r *registry) register(e *result.Entry) {
	r.mu.Lock()
	r.pending[e.ID()] = e
	r.mu.Unlock()
}

// route returns the entry a message for id goes to. known is false when
// nobody has asked for id: the entry is then a new orphan in the cache.
func (r *registry) route(id string) (e *result.Entry, known bool, ev evictions) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.pending[id]; e != nil {
		return e, true, ev
	}
	if e := r.cache.get(id); e != nil {
		return e, true, ev
	}
	e = result.NewEntry(id)
	ev = r.cache.put(id, e, false)
	return e, false, ev
}

// settled moves e, which has just settled with m, from pending into the
// cache. If e is no longer id's pending entry (released while m was being
// delivered to it), m is kept in the cache under a fresh entry, unless the
// cache has one for id already: a later reader of id still finds it.
func (r *registry) settled(id string, e *result.Entry, m *result.Meta) evictions {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending[id] == e {
		delete(r.pending, id)
		return r.cache.put(id, e, true)
	}
	if r.pending[id] != nil || r.cache.get(id) != nil {
		return evictions{}
	}
	fresh := result.NewEntry(id)
	fresh.Deliver(m)
	return r.cache.put(id, fresh, true)
}

// drop forgets id entirely.
func (r *registry) drop(id string) *result.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.pending[id]
	delete(r.pending, id)
	if c := r.cache.get(id); c != nil {
		e = c
		r.cache.remove(id)
	}
	return e
}

// release removes id from the pending entries, if it is pending, and
// returns its entry. A settled entry stays in the cache.
func (r *registry) release(id string) *result.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.pending[id]
	delete(r.pending, id)
	return e
}

// isPending reports whether e is id's pending entry.
func (r *registry) isPending(id string, e *result.Entry) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pending[id] == e
}

// lookup returns the entry for id without creating one.
func (r *registry) lookup(id string) *result.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.pending[id]; e != nil {
		return e
	}
	return r.cache.get(id)
}

func (r *registry) pendingEntries() []*result.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*result.Entry, 0, len(r.pending))
	for _, e := range r.pending {
		out = append(out, e)
	}
	return out
}

func (r *registry) counts() (pending, cached int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending), r.cache.len()
}

// lru is a size- and age-bounded cache of entries, oldest at the back.
type lru struct {
	size  int
	ttl   time.Duration
	ll    *list.List
	items map[string]*list.Element
	now   func() time.Time
}

type lruItem struct {
	id      string
	e       *result.Entry
	added   time.Time
	claimed bool // somebody asked for this id
}

// evictions counts the entries a put evicted: orphans nobody ever asked
// for, and results somebody had asked for (read, or waited on).
type evictions struct{ unclaimed, claimed int }

func (ev evictions) total() int { return ev.unclaimed + ev.claimed }

func (ev *evictions) add(it *lruItem) {
	if it.claimed {
		ev.claimed++
	} else {
		ev.unclaimed++
	}
}

func newLRU(size int, ttl time.Duration) *lru {
	return &lru{size: size, ttl: ttl, ll: list.New(), items: make(map[string]*list.Element), now: time.Now}
}

func (c *lru) len() int { return c.ll.Len() }

func (c *lru) get(id string) *result.Entry {
	el := c.items[id]
	if el == nil {
		return nil
	}
	it := el.Value.(*lruItem)
	if c.now().Sub(it.added) > c.ttl {
		c.ll.Remove(el)
		delete(c.items, id)
		return nil
	}
	return it.e
}

// put inserts id and returns what it evicted.
func (c *lru) put(id string, e *result.Entry, claimed bool) (ev evictions) {
	now := c.now()
	if el := c.items[id]; el != nil {
		it := el.Value.(*lruItem)
		it.e = e
		it.claimed = it.claimed || claimed
		c.ll.MoveToFront(el)
		return ev
	}
	c.items[id] = c.ll.PushFront(&lruItem{id: id, e: e, added: now, claimed: claimed})
	for c.ll.Len() > c.size {
		ev.add(c.ll.Back().Value.(*lruItem))
		c.removeElement(c.ll.Back())
	}
	for el := c.ll.Back(); el != nil && now.Sub(el.Value.(*lruItem).added) > c.ttl; el = c.ll.Back() {
		ev.add(el.Value.(*lruItem))
		c.removeElement(el)
	}
	return ev
}

// claim records that somebody asked for id.
func (c *lru) claim(id string) {
	if el := c.items[id]; el != nil {
		el.Value.(*lruItem).claimed = true
	}
}

func (c *lru) remove(id string) {
	if el := c.items[id]; el != nil {
		c.removeElement(el)
	}
}

func (c *lru) removeElement(el *list.Element) {
	c.ll.Remove(el)
	delete(c.items, el.Value.(*lruItem).id)
}
