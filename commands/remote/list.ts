import {BaseCommand} from '../../src/cli/base.js'
import {RemoteRecord, remoteList} from '../../src/services/remote.js'

export default class RemoteList extends BaseCommand<typeof RemoteList> {
  static override description = 'List the named S3 remotes'

  async run(): Promise<RemoteRecord[]> {
    const remotes = await remoteList()
    if (remotes.length === 0) this.say('no remotes (add one with `holyship remote add NAME s3://BUCKET[/PREFIX]`)')
    for (const r of remotes) this.say(`${r.name.padEnd(16)} ${r.url}${r.endpoint ? `  (endpoint ${r.endpoint})` : ''}${r.region ? `  (region ${r.region})` : ''}`)
    return remotes
  }
}
