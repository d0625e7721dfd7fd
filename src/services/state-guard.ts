/**
 * Pauses or stops a container for a consistent read and always puts it back: in `finally`,
 * and on SIGINT/SIGTERM/SIGHUP (the handler restores the state, then exits 130).
 */
import debugFactory from 'debug'
import {Engine} from '../docker/engine.js'
import {HolyshipError} from '../errors.js'
import {PauseAction, clearPause, putBack, recordPause, recoverOnce} from './pause-journal.js'

const debug = debugFactory('holyship:state')

export type Consistency = 'pause' | 'stop' | 'live'

const active = new Set<StateGuard>()
let handlersInstalled = false
let signalsDelegated = false

/**
 * For a long-running process that handles SIGINT/SIGTERM/SIGHUP itself (the scheduler: it
 * finishes or aborts its current run, then exits 0): while on, the guard's handlers do
 * nothing. Containers are still put back by the guard's own `finally`, or by
 * restoreActiveGuards() when that process aborts.
 */
export function delegateSignals(on = true): void {
  signalsDelegated = on
}

/** Put every container a guard has paused or stopped back into its state. */
export async function restoreActiveGuards(): Promise<void> {
  await Promise.allSettled([...active].map((g) => g.restore()))
}

function installHandlers(): void {
  if (handlersInstalled) return
  handlersInstalled = true
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (signalsDelegated) return
      debug('%s: restoring %d container(s)', sig, active.size)
      void Promise.allSettled([...active].map((g) => g.restore())).then(() => {
        process.stderr.write(`holyship: interrupted (${sig}); containers restored to their state, nothing was recorded\n`)
        process.exit(130)
      })
    })
  }
}

export class StateGuard {
  private changed: PauseAction | undefined
  private restoring?: Promise<void>
  /** the pause journal record (pause-journal.ts): survives a SIGKILL of this process */
  private journal?: string

  constructor(private readonly engine: Engine, private readonly id: string, private readonly name: string) {}

  /** bring the container to the state the mode wants; remembers what to undo */
  async enter(mode: Consistency, state: {Running: boolean; Paused: boolean}): Promise<void> {
    installHandlers()
    // containers a killed holyship left paused or stopped on this engine are put back first
    const fixed = await recoverOnce(this.engine)
    if (fixed.some((r) => r.container === this.id && !r.outcome.startsWith('failed'))) state = (await this.engine.inspectContainer(this.id)).State
    active.add(this)
    if (mode === 'pause' && state.Running && !state.Paused) {
      this.changed = 'paused'
      this.journal = await recordPause(this.engine, this.id, this.name, 'paused')
      await this.engine.pause(this.id)
    } else if (mode === 'stop' && state.Running) {
      this.changed = 'stopped'
      this.journal = await recordPause(this.engine, this.id, this.name, 'stopped')
      if (state.Paused) await this.engine.unpause(this.id)
      await this.engine.stop(this.id)
    }
    debug('%s: %s', this.name, this.changed ?? 'left as it is')
  }

  /**
   * leave the container as enter() made it, for good (a restore --force stopped it to replace
   * it, and has removed it): the journal record goes, nothing is put back
   */
  async release(): Promise<void> {
    this.restoring ??= (async () => {
      await clearPause(this.journal)
      active.delete(this)
    })()
    return this.restoring
  }

  /**
   * undo what enter() did (waiting a little for an engine that is restarting); safe to call
   * more than once. When that fails the journal record stays for the next run to act on.
   */
  restore(): Promise<void> {
    this.restoring ??= (async () => {
      try {
        if (this.changed) {
          try {
            await putBack(this.engine, this.id, this.changed, {waitMs: 15_000})
          } catch (e) {
            if (!(e instanceof HolyshipError) || !this.journal) throw e
            const what = this.changed === 'paused' ? 'paused' : 'stopped'
            throw new HolyshipError(e.code, `${e.message}; container ${this.name} may still be ${what}: the next holyship run against this engine puts it back`, {cause: e, hint: e.hint})
          }
        }
        await clearPause(this.journal)
      } finally {
        active.delete(this)
      }
    })()
    return this.restoring
  }
}
