import {Args} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {formatBytes} from '../src/progress.js'
import {showSnapshot, ShowResult} from '../src/services/inspect.js'
import {withCatalogue} from '../src/services/run.js'

export default class Show extends BaseCommand<typeof Show> {
  static override description = 'Show what a snapshot holds: config, image, filesystem diff, each volume'
  static override args = {snapshot: Args.string({description: 'id, unique id prefix, latest, or latest:NAME', required: true})}

  async run(): Promise<ShowResult> {
    const r = await withCatalogue(this.flags, (ctx) => showSnapshot(ctx, this.args.snapshot))
    this.say(`snapshot ${r.id}`)
    this.say(`  ${r.kind} taken ${r.time} on ${r.host} (${r.consistency}, ${r.reader} reader)${r.tags.length ? ` tags ${r.tags.join(',')}` : ''}`)
    if (r.container) {
      const c = r.container
      this.say(`  container ${c.name}, image ${c.image.tags[0] ?? ''} ${c.image.id.slice(0, 19)} (${formatBytes(c.image.size)})`)
      this.say(`  cmd ${JSON.stringify(c.cmd)} entrypoint ${JSON.stringify(c.entrypoint)}`)
      this.say(`  env ${c.env.length} variable(s), ${Object.keys(c.labels).length} label(s), networks ${c.networks.join(', ') || '-'}`)
      if (c.fsDiff) this.say(`  filesystem diff: ${c.fsDiff.files} files, ${c.fsDiff.dirs} dirs, ${c.fsDiff.deleted} deleted, ${formatBytes(c.fsDiff.bytes)}`)
      else this.say('  filesystem diff: none')
    }
    for (const m of r.mounts) {
      this.say(`  ${m.type}${m.file ? ' (a file or socket)' : ''} ${m.source}${m.destination ? ` at ${m.destination}` : ''}${m.readOnly ? ' (read-only)' : ''}: ${m.files} files, ${m.dirs} dirs, ${formatBytes(m.bytes)} (${formatBytes(m.newBytes)} new)`)
    }
    this.say(`  total ${formatBytes(r.bytes)}, ${formatBytes(r.newBytes)} new, ${(r.durationMs / 1000).toFixed(1)}s`)
    return r
  }
}
