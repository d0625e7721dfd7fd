import {Args} from '@oclif/core'
import {BaseCommand} from '../../src/cli/base.js'
import {RemoteRecord, remoteRemove} from '../../src/services/remote.js'

export default class RemoteRemove extends BaseCommand<typeof RemoteRemove> {
  static override description = 'Remove a named S3 remote (its data stays in the bucket)'
  static override args = {name: Args.string({description: 'remote name', required: true})}

  async run(): Promise<RemoteRecord> {
    const r = await remoteRemove({name: this.args.name})
    this.say(`removed remote ${r.name} (${r.url}); nothing was deleted from the bucket`)
    return r
  }
}
