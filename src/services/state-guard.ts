/**
 * Pauses or stops a container for a consistent read and always puts it back: in `finally`,
 * and on SIGINT/SIGTERM/SIGHUP (the handler restores the state, then exits 130).
 */
import debugFactory from 'debug'
import {Engine} from '../docker/engine.js'

const debug = debugFactory('holyship:state')

export type Consistency = 'pause' | 'stop' | 'live'

const active = new Set<StateGuard>()
let handlersInstalled = false

function installHandlers(): void {
  if (handlersInstalled) return
  handlersInstalled = true
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      debug('%s: restoring %d container(s)', sig, active.size)
      void Promise.allSettled([...active].map((g) => g.restore())).then(() => {
        process.stderr.write(`holyship: interrupted (${sig}); containers restored to their state, nothing was recorded\n`)
        process.exit(130)
      })
    })
  }
}

export class StateGuard {
  private changed: 'paused' | 'stopped' | undefined
  private restoring?: Promise<void>

  constructor(private readonly engine: Engine, private readonly id: string, private readonly name: string) {}

  /** bring the container to the state the mode wants; remembers what to undo */
  async enter(mode: Consistency, state: {Running: boolean; Paused: boolean}): Promise<void> {
    installHandlers()
    active.add(this)
    if (mode === 'pause' && state.Running && !state.Paused) {
      this.changed = 'paused'
      await this.engine.pause(this.id)
    } else if (mode === 'stop' && state.Running) {
      this.changed = 'stopped'
      if (state.Paused) await this.engine.unpause(this.id)
      await this.engine.stop(this.id)
    }
    debug('%s: %s', this.name, this.changed ?? 'left as it is')
  }

  /** undo what enter() did; safe to call more than once */
  restore(): Promise<void> {
    this.restoring ??= (async () => {
      try {
        if (this.changed === 'paused') await this.engine.unpause(this.id)
        else if (this.changed === 'stopped') await this.engine.start(this.id)
      } finally {
        active.delete(this)
      }
    })()
    return this.restoring
  }
}
