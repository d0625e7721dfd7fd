/** Flags shared by the commands that talk to a remote (push, pull, ship, land, list --remote). */
import {Flags} from '@oclif/core'

export const endpointFlag = Flags.string({
  description: 'S3 endpoint URL (MinIO, Ceph, R2...); default: the remote\'s, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS',
  helpGroup: 'REMOTE',
})

export const regionFlag = Flags.string({description: 'S3 region (default: the remote\'s, else AWS_REGION / the AWS config)', helpGroup: 'REMOTE'})

export const parallelFlag = Flags.integer({
  description: 'concurrent transfers',
  default: 4,
  min: 1,
  max: 256,
  env: 'HOLYSHIP_PARALLEL',
  helpGroup: 'REMOTE',
})

export const transferFlags = {endpoint: endpointFlag, region: regionFlag, parallel: parallelFlag}

/** what every transfer service (push, pull, ship, land) takes from a command's flags; `remote` is its --to or --from */
export function transferOptions(
  f: {repo?: string; catalogue?: string; endpoint?: string; region?: string; parallel: number},
  remote: string,
): {repo?: string; catalogue?: string; remote: string; endpoint?: string; region?: string; parallel: number} {
  return {repo: f.repo, catalogue: f.catalogue, remote, endpoint: f.endpoint, region: f.region, parallel: f.parallel}
}
