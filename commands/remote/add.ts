import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../../src/cli/base.js'
import {RemoteRecord, remoteAdd} from '../../src/services/remote.js'

export default class RemoteAdd extends BaseCommand<typeof RemoteAdd> {
  static override description = 'Add a named S3 remote (stored in $XDG_CONFIG_HOME/holyship/remotes.json; never credentials)'
  static override examples = [
    '<%= config.bin %> remote add backup s3://my-bucket/holyship',
    '<%= config.bin %> remote add minio s3://ship --endpoint http://127.0.0.1:9000',
  ]
  static override args = {
    name: Args.string({description: 'remote name', required: true}),
    url: Args.string({description: 's3://BUCKET[/PREFIX]', required: true}),
  }
  static override flags = {
    endpoint: Flags.string({description: 'S3 endpoint URL (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL at use, else AWS)'}),
    region: Flags.string({description: 'S3 region (default: AWS_REGION / the AWS config at use)'}),
  }

  async run(): Promise<RemoteRecord> {
    const r = await remoteAdd({name: this.args.name, url: this.args.url, endpoint: this.flags.endpoint, region: this.flags.region})
    this.say(`added remote ${r.name}: ${r.url}${r.endpoint ? ` at ${r.endpoint}` : ''}`)
    return r
  }
}
