// Starts Swagger UI from the gateway's own assets: a file, not an inline script, so the
// Content-Security-Policy can forbid inline scripts everywhere.
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
