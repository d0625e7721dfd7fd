import {Args} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {diffSnapshots, DiffEntry} from '../src/services/inspect.js'
import {withCatalogue} from '../src/services/run.js'

export default class Diff extends BaseCommand<typeof Diff> {
  static override description = 'Paths added, removed and changed between two snapshots, per volume and in the filesystem diff'
  static override args = {
    from: Args.string({description: 'older snapshot', required: true}),
    to: Args.string({description: 'newer snapshot', required: true}),
  }

  async run(): Promise<{from: string; to: string; changes: DiffEntry[]}> {
    const r = await withCatalogue(this.flags, (ctx) => diffSnapshots(ctx, this.args.from, this.args.to))
    const sign = {added: '+', removed: '-', changed: 'M'} as const
    // one write for all the paths, not one per path
    if (r.changes.length > 0) this.say(r.changes.map((c) => `${sign[c.change]} ${c.scope === 'fs' ? '' : `[${c.scope}] `}${c.path}`).join('\n'))
    else this.say('no differences')
    return r
  }
}
