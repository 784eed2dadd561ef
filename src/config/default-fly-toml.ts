import { InvalidArgumentError } from '../core/index.js'

// What `hangar launch` writes when a directory has no fly.toml, shaped like `fly launch`'s output
// (reference §2: auto_stop_machines = "stop", auto_start_machines = true, min_machines_running = 0).

const APP_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/
const REGION = /^[a-z0-9][a-z0-9-]{0,31}$/

/** TOML basic strings accept JSON's escapes, so JSON.stringify quotes safely. */
const quote = (value: string): string => JSON.stringify(value)

export function defaultFlyToml(app: string, primaryRegion: string, image?: string): string {
  if (!APP_NAME.test(app)) throw new InvalidArgumentError(`app name ${JSON.stringify(app)}: use lowercase letters, digits and "-" (at most 63 characters)`)
  if (!REGION.test(primaryRegion)) throw new InvalidArgumentError(`region ${JSON.stringify(primaryRegion)}: use lowercase letters, digits and "-"`)
  if (image !== undefined && (image.trim() === '' || /[\s]/.test(image))) throw new InvalidArgumentError(`image ${JSON.stringify(image)} is not an image reference`)
  const lines = [
    `# fly.toml app configuration file generated for ${app} by hangar launch`,
    '#',
    '# See https://fly.io/docs/reference/configuration/ for the keys; Hangar reads this file as flyctl does.',
    '',
    `app = ${quote(app)}`,
    `primary_region = ${quote(primaryRegion)}`,
    '',
    '[build]',
    ...(image !== undefined ? [`  image = ${quote(image)}`] : []),
    '',
    '[http_service]',
    '  internal_port = 8080',
    '  force_https = true',
    '  auto_stop_machines = "stop"',
    '  auto_start_machines = true',
    '  min_machines_running = 0',
    '  processes = ["app"]',
    '',
    '[[vm]]',
    '  size = "shared-cpu-1x"',
    '',
  ]
  return lines.join('\n')
}
