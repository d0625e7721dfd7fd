import {Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {SnapshotRow} from '../src/catalogue/catalogue.js'
import {formatBytes} from '../src/progress.js'
import {endpointFlag, regionFlag} from '../src/cli/remote-flags.js'
import {listSnapshots} from '../src/services/inspect.js'
import {withCatalogue} from '../src/services/run.js'

export default class List extends BaseCommand<typeof List> {
  static override description = 'List snapshots: id, time, host, container/volumes, size, new data added'
  static override flags = {
    container: Flags.string({description: 'only snapshots of this container'}),
    volume: Flags.string({description: 'only snapshots holding this volume'}),
    tag: Flags.string({description: 'only snapshots with this tag'}),
    remote: Flags.string({description: "list a remote's snapshots instead (name or s3://BUCKET[/PREFIX])", helpGroup: 'REMOTE'}),
    endpoint: endpointFlag,
    region: regionFlag,
  }

  async run(): Promise<SnapshotRow[]> {
    const f = this.flags
    const rows = f.remote
      ? await (await import('../src/services/remote.js')).listRemoteSnapshots({catalogue: f.catalogue, remote: f.remote, endpoint: f.endpoint, region: f.region, container: f.container, volume: f.volume, tag: f.tag})
      : await withCatalogue(f, async (ctx) => listSnapshots(ctx, f))
    if (rows.length === 0) this.say('no snapshots')
    else {
      // one write for the whole table, not one per row
      const lines = [['ID          ', 'TIME                ', 'HOST        ', 'KIND     ', 'NAME                ', 'SIZE      ', 'NEW'].join(' ')]
      for (const r of rows) {
        lines.push(
          [
            r.id.slice(0, 12),
            r.time.slice(0, 19).replace('T', ' ').padEnd(20),
            r.host.slice(0, 12).padEnd(12),
            r.kind.padEnd(9),
            (r.name + (r.volumes.length && r.kind === 'container' ? ` +${r.volumes.length}v` : '')).slice(0, 20).padEnd(20),
            formatBytes(r.bytes).padEnd(10),
            formatBytes(r.newBytes),
          ].join(' '),
        )
      }
      this.say(lines.join('\n'))
    }
    return rows
  }
}
